"""The KServe v2 tensor codec: datatypes, request tensors to numpy, numpy to response tensors,
and model metadata.

A tensor on the wire is ``{"name", "datatype", "shape", "data"}`` with ``data`` in row-major
order, flat or nested, or, with the binary data extension (``binary_data``), raw bytes after the
JSON header. Decoding checks what the wire format alone can check (known datatype, element or
byte count, values of the declared kind, integral values for integer datatypes); whether the
model accepts the tensor, and how its dtype converts, is the engine's check, made when the
request runs (``engine.input_dtypes``).
"""

import math

import ml_dtypes
import numpy as np

from weightdb.database import Database
from weightdb.engine.input_dtypes import kind_of
from weightdb.errors import WeightDBError
from weightdb.server.binary_data import binary_outputs
from weightdb.server.errors import ApiError
from weightdb.server.schemas import (
    InferInput,
    InferRequest,
    ModelMetadata,
    TensorMetadata,
)
from weightdb.storage import dtypes

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}
# The kinds of JSON values (as numpy infers them) each kind of datatype accepts.
# JSON has one number type, so integral floats (1.0) count as integers.
_ACCEPTED_KINDS = {"b": "b", "u": "iuf", "i": "iuf", "f": "iuf", "V": "iuf", "O": "OUSb"}


class ProtocolError(ApiError):
    """A request that is not a valid KServe v2 request (400)."""

    def __init__(self, message: str):
        super().__init__(400, message)


def datatype_of(dtype: np.dtype) -> str:
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise WeightDBError(f"dtype {dtype} has no KServe v2 datatype") from None


def decode_request(
    request: InferRequest, binary: dict[str, memoryview] | None = None
) -> dict[str, np.ndarray]:
    """Input name -> array; every input named once, shaped and typed as declared. ``binary``
    holds the raw bytes of the inputs sent as binary data."""
    binary = binary or {}
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in arrays:
            raise ProtocolError(f"input {tensor.name!r} is given more than once")
        arrays[tensor.name] = decode_tensor(tensor, binary.get(tensor.name))
    return arrays


def decode_tensor(tensor: InferInput, raw: memoryview | None = None) -> np.ndarray:
    """The tensor from its JSON ``data``, or from ``raw`` little-endian bytes."""
    where = f"input {tensor.name!r}"
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise ProtocolError(
            f"{where}: unknown datatype {tensor.datatype!r}; use one of {', '.join(DATATYPES)}"
        )
    if any(d < 0 for d in tensor.shape):
        raise ProtocolError(f"{where}: shape {tensor.shape} has a negative dimension")
    expected = math.prod(tensor.shape)
    if raw is not None:
        return _from_bytes(where, tensor, dtype, raw, expected)
    if tensor.data is None:
        raise ProtocolError(f"{where} has no 'data' and no parameters.binary_data_size")
    try:
        values = np.asarray(tensor.data, dtype=object if dtype.kind == "O" else None)
    except ValueError:
        raise ProtocolError(f"{where}: data is ragged (nested lists of unequal lengths)") from None
    if values.size and values.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise ProtocolError(
            f"{where}: datatype {tensor.datatype} but data holds {_kind_name(values.dtype)}"
        )
    if values.size != expected:
        raise ProtocolError(
            f"{where}: shape {tensor.shape} needs {expected} values, data has {values.size}"
        )
    if dtype.kind in "iu" and values.size:
        _check_integers(where, tensor.datatype, values, dtype)
    return values.astype(dtype, copy=False).reshape(tensor.shape)


def _check_integers(where: str, datatype: str, values: np.ndarray, dtype: np.dtype) -> None:
    """JSON values for an integer datatype: integral, and within its range."""
    if values.dtype.kind == "f":
        fractional = values[values != np.trunc(values)]  # NaN included: NaN != NaN
        if fractional.size:
            raise ProtocolError(
                f"{where}: datatype {datatype} but data holds a non-integral value "
                f"({fractional.flat[0]}); integer inputs take whole numbers only"
            )
    limits = np.iinfo(dtype)
    if values.min() < limits.min or values.max() > limits.max:
        raise ProtocolError(f"{where}: a value is outside the range of {datatype}")


def _from_bytes(
    where: str, tensor: InferInput, dtype: np.dtype, raw: memoryview, count: int
) -> np.ndarray:
    if dtype.kind == "O":
        raise ProtocolError(f"{where}: BYTES is not supported as binary data; send it as 'data'")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"{where}: shape {tensor.shape} of {tensor.datatype} needs "
            f"{count * dtype.itemsize} bytes, binary_data_size is {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(tensor.shape).copy()  # owned and aligned
    if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise ProtocolError(f"{where}: a BOOL byte is neither 0 nor 1")
    return array


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}.get(
        dtype.kind, "strings or mixed values"
    )


def encode_response(
    model: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[dict, list[bytes]]:
    """The response header (an ``InferResponse``) limited to the outputs the request names (all
    when it names none), and the bytes of the outputs it asks for as binary data, in order.
    Built as a plain dict: validating every value again would only cost."""
    wanted = [o.name for o in request.outputs] if request.outputs else list(outputs)
    unknown = [name for name in wanted if name not in outputs]
    if unknown:
        raise ProtocolError(
            f"requested outputs {unknown} do not exist; the model has {list(outputs)}"
        )
    binary = binary_outputs(request, wanted)
    tensors, chunks = [], []
    for name in wanted:
        array = outputs[name]
        tensor = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if name in binary:
            chunks.append(np.ascontiguousarray(array).tobytes())
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = _wire_values(array)
        tensors.append(tensor)
    return {"model_name": model, "id": request.id, "outputs": tensors}, chunks


def _wire_values(array: np.ndarray) -> list:
    """The values as JSON can carry them: NaN and infinities, which JSON lacks, as the strings
    the protobuf JSON mapping uses ("NaN", "Infinity", "-Infinity")."""
    values = array.ravel().tolist()
    if kind_of(array.dtype) != "float" or np.isfinite(array).all():
        return values
    return [_wire_float(v) for v in values]


def _wire_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def model_metadata(db: Database, name: str) -> ModelMetadata:
    """Inputs and outputs with datatypes and shapes (-1 for a free dimension), and whether
    requests are batched together (the verdict the batcher uses).

    Output types come from the stored graph's declared outputs; the engine needs only names.
    """
    prepared, rows_apart = db.prepared.batchable(name)
    inputs = [
        TensorMetadata(name=s.name, datatype=datatype_of(s.dtype), shape=_wire_shape(s.dims))
        for s in prepared.inputs
    ]
    outputs = []
    for value in db.graph(name).graph.output:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        dtype = dtypes.from_onnx(tensor.elem_type).numpy
        outputs.append(
            TensorMetadata(name=value.name, datatype=datatype_of(dtype), shape=_wire_shape(dims))
        )
    return ModelMetadata(
        name=name,
        inputs=inputs,
        outputs=outputs,
        batched_across_requests=rows_apart.independent,
        batching_reason=rows_apart.reason,
    )


def _wire_shape(dims: tuple[int | str | None, ...]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]
