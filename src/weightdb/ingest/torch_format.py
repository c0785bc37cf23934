"""PyTorch state dicts, loaded with ``weights_only=True`` only: user files are never unpickled
into arbitrary objects."""

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from weightdb.errors import SourceFormatError, UnsupportedDTypeError, WeightDBError, one_line
from weightdb.ingest import declared
from weightdb.ingest.source import ModelSource, TensorEntry
from weightdb.storage import dtypes


def require_torch():
    try:
        import torch
    except ImportError:
        raise WeightDBError(
            "importing PyTorch files needs PyTorch: pip install 'weightdb[torch]'"
        ) from None
    return torch


def tensor_to_numpy(tensor) -> np.ndarray:
    """Bit-exact numpy view of a CPU tensor, bfloat16 included (numpy lacks it natively)."""
    torch = require_torch()
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(dtypes.by_name("bfloat16").numpy)
    return tensor.numpy()


def _state_dict(loaded: object, path: Path) -> Mapping:
    if (
        isinstance(loaded, Mapping)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], Mapping)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise SourceFormatError(
            f"{path} holds a {type(loaded).__name__}, not a state dict of tensors; save "
            "model.state_dict() instead"
        )
    return loaded


def open_torch(path: Path) -> ModelSource:
    torch = require_torch()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise SourceFormatError(
            f"{path} cannot be loaded as a PyTorch state dict with weights_only=True: "
            f"{one_line(error)}"
        ) from None
    state = _state_dict(loaded, path)
    tensors = []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise SourceFormatError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        if value.layout != torch.strided:
            raise SourceFormatError(
                f"{path}: tensor {name!r} is stored {value.layout} (not dense); weightdb imports "
                "dense tensors only: save tensor.to_dense() instead"
            )
        try:
            dtype = dtypes.by_name(str(value.dtype).removeprefix("torch."))
        except UnsupportedDTypeError as error:
            raise UnsupportedDTypeError(f"{path}: tensor {name!r}: {error}") from None
        shape = declared.tensor_shape(list(value.shape), dtype.itemsize, f"{path}: tensor {name!r}")
        array = tensor_to_numpy(value)
        tensors.append(TensorEntry(str(name), dtype, shape, lambda a=array: a))
    return ModelSource(format="pytorch", tensors=tensors)
