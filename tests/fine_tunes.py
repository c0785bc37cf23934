"""Test data for the lossless tier: every dtype storage codes, and a block of each with a
"fine-tune" of it, whose low bits change while some elements stay as they were."""

import ml_dtypes
import numpy as np

EVERY_DTYPE = [
    np.float64,
    np.float32,
    np.float16,
    ml_dtypes.bfloat16,
    np.int64,
    np.int32,
    np.int16,
    np.int8,
    np.uint8,
    np.bool_,
]


def base_and_tuned(
    rng: np.random.Generator, dtype, shape: int | tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """An array of ``shape`` and a fine-tune of it: floats move by about 1e-3 of their value
    (every third element not at all), integers by one in about a third of the elements,
    booleans flip in about 5%."""
    if np.dtype(dtype).kind == "b":
        base = rng.random(shape) < 0.3
        return base, base ^ (rng.random(shape) < 0.05)
    if np.dtype(dtype).kind in "iu":
        base = rng.integers(0, 100, shape).astype(dtype)
        return base, (base + (rng.random(shape) < 0.3)).astype(dtype)
    base = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    tuned = base * (1 + rng.standard_normal(shape).astype(np.float32) * 1e-3)
    tuned.reshape(-1)[::3] = base.reshape(-1)[::3]
    return base.astype(dtype), tuned.astype(dtype)
