"""Reading numpy ``.npz`` archives (never with pickle) and in-memory arrays."""

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from tokenize import TokenError

import numpy as np

from weightdb.errors import SourceFormatError, UnsupportedDTypeError, one_line
from weightdb.ingest import declared
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


NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,  # utf-8 names; the fields parse the same
}
# numpy parses .npy headers as Python literals, and falls back to tokenize on old headers
UNREADABLE = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    SyntaxError,
    TokenError,
    NotImplementedError,  # zipfile: an unknown compression method
    RuntimeError,  # zipfile: an encrypted member
)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, where: str) -> np.ndarray:
    """One ``.npy`` member, its declared shape and dtype checked against its size first."""
    with archive.open(member) as file:
        version = np.lib.format.read_magic(file)
        if version not in NPY_HEADER_READERS:
            raise ValueError(f"unknown .npy format version {version}")
        shape, _, dtype = NPY_HEADER_READERS[version](file)
        if dtype.hasobject:
            raise SourceFormatError(
                f"{where} holds Python objects, which weightdb refuses to load: loading them "
                "would unpickle; store numeric arrays"
            )
        shape = declared.tensor_shape(shape, dtype.itemsize, where)
        needed = declared.nbytes(shape, dtype.itemsize)
        if file.tell() + needed != member.file_size:
            raise ValueError(f"{dtype}{list(shape)} needs {needed} bytes after its header")
    with archive.open(member) as file:
        return np.lib.format.read_array(file, allow_pickle=False)


def open_npz(path: Path) -> ModelSource:
    try:
        archive = zipfile.ZipFile(path)
    except UNREADABLE as error:
        raise SourceFormatError(
            f"{path} is not a readable .npz archive: {one_line(error)}"
        ) from None
    tensors = []
    with archive:
        for member in archive.infolist():
            where = f"{path}: member {member.filename!r}"
            if not member.filename.endswith(".npy"):
                raise SourceFormatError(
                    f"{where} is not a .npy array; an .npz model holds only arrays (numpy.savez)"
                )
            name = member.filename.removesuffix(".npy")
            try:
                array = _read_member(archive, member, where)
            except UNREADABLE as error:
                raise SourceFormatError(
                    f"{where} is not a readable .npy array ({one_line(error)}); re-save it with "
                    "numpy.savez"
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
