"""Matrix products whose rows do not depend on the batch they arrive in.

A BLAS chooses kernels and splits work by the shapes it is given, and kernels differ in the
order they sum in. Measured with OpenBLAS's Haswell kernels (used on AMD EPYC): the same row
gets different last bits in a batch of 7, 64 or 300 rows, and even within one call of 16 rows
its bits depend on its position. So, while batch invariance is on (the default), every
product over rows is a sequence of calls of exactly ``tile_rows`` rows (the last tile padded
with zeros), BLAS single-threaded (``threads``), with a C-contiguous (k, n) operand whether it
is a page, a copy or an array in memory. A row's bits then depend on the row alone.

``tile_rows`` is measured, not assumed: for each operand shape, the largest tile of at most
32 rows in which a row gets the same bits at every position (probed once per process with
fixed random data: 32 rows with OpenBLAS's SkylakeX kernels, 8 with its Haswell ones). A
product of few rows pays for a whole tile, and small tiles repeat the BLAS's packing of the
operand: 32 rows balance the two (a sweep of 8 to 64 on 4096 x 4096: 7.7x a lone row's
matrix-vector product, 1.16x and 1.29x plain numpy at 64 and 256 rows). Where that costs too
much, ``batch_invariance(False)`` trades the guarantee for the BLAS's own choices.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import numpy as np
import threadpoolctl

TILE_CHOICES = (32, 16, 8, 4, 2, 1)

_invariant: ContextVar[bool] = ContextVar("weightdb_batch_invariant", default=True)


@contextmanager
def batch_invariance(enabled: bool) -> Iterator[None]:
    """Compute products in this context with (default) or without fixed row tiles."""
    token = _invariant.set(enabled)
    try:
        yield
    finally:
        _invariant.reset(token)


def tile_rows(k: int, n: int, dtype: np.dtype) -> int:
    """Rows per BLAS call for products with a (k, n) operand of ``dtype`` (1: no tiling)."""
    return _probed_tile(k, n, np.dtype(dtype).str) if _invariant.get() else 1


@cache
def _probed_tile(k: int, n: int, dtype: str) -> int:
    rng = np.random.default_rng(0)
    operand = rng.standard_normal((k, n)).astype(dtype)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return next(t for t in TILE_CHOICES if _positions_agree(t, operand, rng))


def _positions_agree(tile: int, operand: np.ndarray, rng: np.random.Generator) -> bool:
    """Whether a row gets the same bits at every position of a ``tile``-row product."""
    for _ in range(2):
        row = rng.standard_normal(operand.shape[0]).astype(operand.dtype)
        filler = rng.standard_normal((tile, operand.shape[0])).astype(operand.dtype)
        results = set()
        for position in range(tile):
            x = filler.copy()
            x[position] = row
            results.add(np.matmul(x, operand)[position].tobytes())
        if len(results) > 1:
            return False
    return True


def padded(x: np.ndarray, tile: int) -> np.ndarray:
    """A C-contiguous 2-D ``x`` with its rows padded with zeros to whole tiles."""
    x = np.ascontiguousarray(x)
    rows = x.shape[0]
    if rows % tile == 0:
        return x
    out = np.zeros((rows + tile - rows % tile, x.shape[1]), x.dtype)
    out[:rows] = x
    return out


def multiply(x: np.ndarray, operand: np.ndarray, out: np.ndarray, tile: int) -> None:
    """out = x @ operand, ``tile`` rows per BLAS call; x's rows are a multiple of ``tile``.

    The tiles go to numpy as one stack of (tile, k) matrices: its loop makes the same call per
    tile as a Python loop would (the bits are equal), without a Python step per tile. Splitting
    the first axis of ``out`` is always a view, so the products land in ``out``.
    """
    if not _invariant.get():
        np.matmul(x, operand, out=out)
        return
    stacked = out.reshape(-1, tile, out.shape[1])
    np.matmul(x.reshape(-1, tile, x.shape[1]), operand, out=stacked)


def product(x: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """x @ operand for a 2-D x (m, k) and a 2-D operand (k, n), batch-invariant (see above)."""
    operand = np.ascontiguousarray(operand)
    tile = tile_rows(*operand.shape, operand.dtype)
    tiles = padded(x, tile)
    out = np.empty((tiles.shape[0], operand.shape[1]), np.result_type(x, operand))
    multiply(tiles, operand, out, tile)
    return out[: x.shape[0]]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul, batch-invariant when ``b`` is a matrix (rows of ``a`` are independent then).

    A stack of matrices (``b`` of rank 3 or more) multiplies each item with the same shapes
    whatever the batch, so numpy's own loop is invariant already.
    """
    if b.ndim != 2 or a.ndim < 2:
        return np.matmul(a, b)
    result = product(a.reshape(-1, a.shape[-1]), b)
    return result.reshape(*a.shape[:-1], b.shape[1])
