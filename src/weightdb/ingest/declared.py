"""Checks on what a source file declares (shapes, offsets, lengths) before anything trusts it.

A header costs nothing to fill with absurd numbers, and every importer loops or allocates by
what it declares. So each declared number is checked here first: a whole, non-negative integer
(not 1.9, "8" or true), a rank numpy can hold, and sizes that fit int64, so no product wraps.
Each importer then checks the bytes a shape needs against what its file really holds.
"""

import json
import math

from weightdb.errors import SourceFormatError

MAX_RANK = 32
"""numpy stops at 64 dimensions; no stored weight comes near 32."""

INT64_MAX = 2**63 - 1

REMEDY = "the file is damaged or hostile: re-save it from the framework that made it"


def whole_number(value: object, what: str) -> int:
    """``value`` if it is a non-negative int; ``what`` names it in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceFormatError(f"{what} is {value!r}, not a whole number; {REMEDY}")
    if not 0 <= value <= INT64_MAX:
        raise SourceFormatError(f"{what} is {value}, outside 0..2**63-1; {REMEDY}")
    return value


def tensor_shape(value: object, itemsize: int, what: str) -> tuple[int, ...]:
    """A declared shape as a tuple of ints, refused unless numpy could hold the tensor.

    The product of the non-zero dimensions must fit int64 in bytes even when another dimension
    is zero: numpy refuses such an empty array, and it is what the block grid is built from.
    """
    if not isinstance(value, list | tuple):
        raise SourceFormatError(f"{what} has shape {value!r}, not a list of dimensions; {REMEDY}")
    if len(value) > MAX_RANK:
        raise SourceFormatError(
            f"{what} has {len(value)} dimensions, more than the {MAX_RANK} weightdb stores; "
            f"{REMEDY}"
        )
    shape = tuple(whole_number(d, f"{what} dimension {i}") for i, d in enumerate(value))
    if math.prod(d for d in shape if d) * itemsize > INT64_MAX:
        raise SourceFormatError(
            f"{what} has shape {list(shape)}, larger than any file can hold; {REMEDY}"
        )
    return shape


def nbytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes a tensor of ``shape`` needs, exact (numpy's int64 product can wrap)."""
    return math.prod(shape) * itemsize


MAX_NUMBER_DIGITS = 20
"""Enough for any int64; Python would parse up to 4300 digits, slowly, and then fail."""


def _number(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of {len(text)} digits ({text[:12]}...) is out of range")
    return int(text)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: bytes | str, what: str) -> object:
    """Strict JSON: no NaN or Infinity, no integer beyond int64's digits, bounded nesting.

    ``what`` begins the error message, e.g. "model.json is malformed".
    """
    try:
        return json.loads(text, parse_int=_number, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise SourceFormatError(f"{what}: {reason}; {REMEDY}") from None
