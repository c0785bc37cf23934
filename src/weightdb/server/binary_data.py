"""The binary tensor data extension (KServe v2 as Triton defines it): tensors as raw
little-endian bytes after the JSON header, instead of JSON lists.

A request with the ``Inference-Header-Content-Length`` header carries that many bytes of JSON,
then the bytes of each input whose ``parameters.binary_data_size`` is set, back to back in the
order of ``inputs``. A response does the same for outputs asked for as binary: by
``parameters.binary_data`` on a requested output, or for all outputs by the request's
``parameters.binary_data_output``. Every size is checked against the body before anything is
sliced, and a body with bytes left over is refused: a client whose sizes do not add up would
otherwise get answers computed from the wrong bytes.
"""

import re

from weightdb.server.errors import ApiError
from weightdb.server.schemas import InferRequest

HEADER = "Inference-Header-Content-Length"
_DIGITS = re.compile(r"[0-9]{1,19}")


class BinaryDataError(ApiError):
    """A binary request whose sizes do not fit its body (400)."""

    def __init__(self, message: str):
        super().__init__(400, message)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview | None]:
    """The JSON header and the binary tail of a request body (None without the header)."""
    if header_length is None:
        return body, None
    if not _DIGITS.fullmatch(header_length.strip()):
        raise BinaryDataError(
            f"{HEADER} must be a non-negative integer (the JSON header's length in bytes), "
            f"got {header_length[:40]!r}"
        )
    length = int(header_length)
    if length > len(body):
        raise BinaryDataError(f"{HEADER} is {length} but the body has only {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def input_bytes(request: InferRequest, tail: memoryview | None) -> dict[str, memoryview]:
    """Input name -> its raw bytes, for each input with ``binary_data_size``; the sizes must
    add up to the tail exactly."""
    found: dict[str, memoryview] = {}
    offset = 0
    for position, tensor in enumerate(request.inputs):
        size = _parameter(tensor.parameters, "binary_data_size", int, f"inputs.{position}.")
        if size is None:
            continue
        where = f"input {tensor.name!r}"
        if tail is None:
            raise BinaryDataError(
                f"{where} has binary_data_size but the request has no {HEADER} header"
            )
        if size < 0:
            raise BinaryDataError(f"{where}: binary_data_size is negative ({size})")
        if tensor.data is not None:
            raise BinaryDataError(f"{where} has both 'data' and binary_data_size; send one")
        if offset + size > len(tail):
            raise BinaryDataError(
                f"{where}: binary_data_size {size} runs past the end of the body (the binary "
                f"part after the {HEADER} bytes of JSON is {len(tail)} bytes, {offset} used "
                "by earlier inputs)"
            )
        found[tensor.name] = tail[offset : offset + size]
        offset += size
    if tail is not None and offset != len(tail):
        raise BinaryDataError(
            f"the body has {len(tail)} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return found


def binary_outputs(request: InferRequest, names: list[str]) -> set[str]:
    """The outputs among ``names`` to send as binary data."""
    everything = _parameter(request.parameters, "binary_data_output", bool, "")
    chosen = {name for name in names if everything}
    for position, output in enumerate(request.outputs or []):
        wanted = _parameter(output.parameters, "binary_data", bool, f"outputs.{position}.")
        if wanted is not None:
            (chosen.add if wanted else chosen.discard)(output.name)
    return chosen


def _parameter(parameters: dict | None, name: str, kind: type, where: str):
    """``parameters[name]`` checked to be a ``kind`` (a bool is not an int here), or None;
    ``where`` prefixes the parameter's path in error messages."""
    value = (parameters or {}).get(name)
    if value is None:
        return None
    if type(value) is not kind:
        expected = "true or false" if kind is bool else "an integer"
        raise BinaryDataError(f"{where}parameters.{name} must be {expected}, got {value!r}")
    return value
