"""Reading numpy ``.npz`` archives (never with pickle) and in-memory arrays."""

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from weightdb.errors import SourceFormatError, UnsupportedDTypeError
from weightdb.ingest.source import ModelSource, TensorEntry
from weightdb.storage import dtypes


def _entry(name: str, array: np.ndarray, where: str) -> TensorEntry:
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    try:
        dtype = dtypes.from_numpy(array.dtype)
    except UnsupportedDTypeError:
        if array.dtype.kind != "V":
            raise
        raise UnsupportedDTypeError(
            f"{where}: array {name!r} has raw dtype {array.dtype}; npz cannot carry bfloat16 or "
            "structured dtypes, so import such models from safetensors"
        ) from None
    return TensorEntry(name, dtype, tuple(array.shape), lambda: array)


def open_npz(path: Path) -> ModelSource:
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise SourceFormatError(f"{path} is not a readable .npz archive: {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SourceFormatError(f"{path} is a single .npy array, not an .npz archive of tensors")
    with archive:
        tensors = []
        for name in archive.files:
            try:
                array = archive[name]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
                raise SourceFormatError(
                    f"{path}: array {name!r} cannot be read ({error}); object arrays are refused "
                    "because loading them would unpickle"
                ) from None
            tensors.append(_entry(name, array, str(path)))
    return ModelSource(format="npz", tensors=tensors)


def from_arrays(arrays: Mapping[str, np.ndarray]) -> ModelSource:
    """A source over in-memory arrays (the Python API's ``import_arrays``)."""
    tensors = []
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray | np.generic):
            raise SourceFormatError(
                f"tensor {name!r} is a {type(array).__name__}, not a numpy array"
            )
        tensors.append(_entry(name, np.asarray(array), "arrays"))
    return ModelSource(format="arrays", tensors=tensors)
