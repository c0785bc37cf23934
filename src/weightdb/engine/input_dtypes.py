"""The dtype conversions a graph input accepts: a cast that loses nothing in kind, never one that
changes what the numbers mean.

Allowed: float to float (float64 features for a float32 input, float16 or bfloat16 widened to
float32) and integer to integer (int32 ids for an int64 input), provided every value fits the
expected dtype. Refused: a float for an integer input (1.7 is not a token id), an integer for a
float input (the caller most likely sent the wrong tensor), and anything to or from bool. Every
path into the engine (Python, SQL, the CLI's ``predict``, HTTP) goes through this one check.
"""

import ml_dtypes
import numpy as np

from weightdb.engine.errors import InvalidInputError

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def kind_of(dtype: np.dtype) -> str:
    """ "float", "integer", "bool" or "other" (bfloat16 is a float though numpy calls it void)."""
    if dtype.kind == "f" or dtype == _BFLOAT16:
        return "float"
    return {"i": "integer", "u": "integer", "b": "bool"}.get(dtype.kind, "other")


def convert_input(name: str, array: np.ndarray, expected: np.dtype) -> np.ndarray:
    """``array`` as ``expected``, or InvalidInputError naming the input and both dtypes."""
    given = array.dtype
    if given == expected:
        return array
    prefix = f"input {name!r} must be {expected}, got {given}"
    given_kind, expected_kind = kind_of(given), kind_of(expected)
    if given_kind != expected_kind:
        if given_kind == "float" and expected_kind == "integer":
            raise InvalidInputError(f"{prefix}: floats are not cast to integers")
        if given_kind == "integer" and expected_kind == "float":
            raise InvalidInputError(f"{prefix}: integers are not cast to floats")
        raise InvalidInputError(f"{prefix}: send {expected}")
    if expected_kind == "integer":
        _check_integer_range(prefix, array, expected)
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the input
        converted = array.astype(expected)
    if expected_kind == "float":
        _check_float_range(prefix, array, converted, expected)
    return converted


def _check_integer_range(prefix: str, array: np.ndarray, expected: np.dtype) -> None:
    if array.size == 0 or np.can_cast(array.dtype, expected, "safe"):
        return
    limits = np.iinfo(expected)
    low, high = array.min(), array.max()
    if low < limits.min or high > limits.max:
        outside = low if low < limits.min else high
        raise InvalidInputError(f"{prefix} with a value ({outside}) outside {expected}'s range")


def _check_float_range(
    prefix: str, array: np.ndarray, converted: np.ndarray, expected: np.dtype
) -> None:
    """A finite value that became infinite did not fit (float32 1e5 into float16)."""
    if ml_dtypes.finfo(expected).max >= ml_dtypes.finfo(array.dtype).max:
        return
    overflowed = np.isinf(converted) & np.isfinite(array)
    if overflowed.any():
        value = array[overflowed].flat[0]
        raise InvalidInputError(f"{prefix} with a value ({value}) outside {expected}'s range")
