"""The dtypes weightdb stores, with their names in safetensors, numpy, ONNX and torch.

One canonical name per dtype (the numpy-style name, e.g. ``bfloat16``) is what the catalog
records; each file format maps to and from it here and nowhere else.
"""

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto

from weightdb.errors import UnsupportedDTypeError


@dataclass(frozen=True)
class DType:
    name: str  # canonical, as stored in the catalog
    numpy: np.dtype
    safetensors: str
    onnx: int

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


_ALL = [
    DType("float64", np.dtype("<f8"), "F64", TensorProto.DOUBLE),
    DType("float32", np.dtype("<f4"), "F32", TensorProto.FLOAT),
    DType("float16", np.dtype("<f2"), "F16", TensorProto.FLOAT16),
    DType("bfloat16", np.dtype(ml_dtypes.bfloat16), "BF16", TensorProto.BFLOAT16),
    DType("int64", np.dtype("<i8"), "I64", TensorProto.INT64),
    DType("int32", np.dtype("<i4"), "I32", TensorProto.INT32),
    DType("int16", np.dtype("<i2"), "I16", TensorProto.INT16),
    DType("int8", np.dtype("i1"), "I8", TensorProto.INT8),
    DType("uint8", np.dtype("u1"), "U8", TensorProto.UINT8),
    DType("bool", np.dtype("?"), "BOOL", TensorProto.BOOL),
]
_BY_NAME = {d.name: d for d in _ALL}
_BY_SAFETENSORS = {d.safetensors: d for d in _ALL}
_BY_ONNX = {d.onnx: d for d in _ALL}
SUPPORTED = ", ".join(d.name for d in _ALL)


def by_name(name: str) -> DType:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnsupportedDTypeError(
            f"dtype {name!r} is not supported; weightdb stores {SUPPORTED}"
        ) from None


def from_safetensors(code: str) -> DType:
    try:
        return _BY_SAFETENSORS[code]
    except KeyError:
        known = ", ".join(_BY_SAFETENSORS)
        raise UnsupportedDTypeError(
            f"safetensors dtype {code!r} is not supported; weightdb reads {known}"
        ) from None


def from_onnx(code: int) -> DType:
    try:
        return _BY_ONNX[code]
    except KeyError:
        label = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else code
        raise UnsupportedDTypeError(
            f"ONNX tensor type {label} is not supported; weightdb stores {SUPPORTED}"
        ) from None


def from_numpy(dtype: np.dtype) -> DType:
    """Map a little-endian numpy dtype; callers convert big-endian data first."""
    dtype = np.dtype(dtype)
    for d in _ALL:
        if d.numpy == dtype:
            return d
    raise UnsupportedDTypeError(
        f"numpy dtype {dtype} is not supported; weightdb stores {SUPPORTED}"
    )
