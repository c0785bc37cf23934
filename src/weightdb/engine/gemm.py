"""Matrix products whose rows do not depend on the batch they arrive in.

A BLAS chooses kernels and splits work by the shapes it is given, and different kernels sum in
different orders: with OpenBLAS's Haswell kernels, the same row multiplied in a batch of 7, 64
or 300 rows gets different last bits (measured; its SkylakeX kernels happen to agree for 8
rows or more). So, while batch invariance is on (the default), every product over rows runs on
tiles of exactly ``ROW_TILE`` rows, the last one padded with zeros, BLAS single-threaded
(``threads``): the BLAS sees the same shapes whatever the batch, so a row's result depends on
the row alone. The operand is always a C-contiguous (k, n) array, so whether it comes from a
page, a copy or memory does not change the bits either.

The price is paid at small batches: a lone row costs a ``ROW_TILE``-row product, where an
unconstrained BLAS would use a matrix-vector kernel. ``batch_invariance(False)`` trades the
guarantee for that speed.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

# Rows per tile: chosen by a sweep over 8, 16, 32 and 64 (benchmarks/results/engine.md).
ROW_TILE = 16

_invariant: ContextVar[bool] = ContextVar("weightdb_batch_invariant", default=True)


@contextmanager
def batch_invariance(enabled: bool) -> Iterator[None]:
    """Compute products in this context with (default) or without fixed row tiles."""
    token = _invariant.set(enabled)
    try:
        yield
    finally:
        _invariant.reset(token)


def padded(x: np.ndarray) -> np.ndarray:
    """A C-contiguous 2-D ``x`` with its rows padded with zeros to whole tiles."""
    x = np.ascontiguousarray(x)
    rows = x.shape[0]
    if not _invariant.get() or rows % ROW_TILE == 0:
        return x
    out = np.zeros((rows + ROW_TILE - rows % ROW_TILE, x.shape[1]), x.dtype)
    out[:rows] = x
    return out


def multiply(x: np.ndarray, operand: np.ndarray, out: np.ndarray) -> None:
    """out = x @ operand for an ``x`` from ``padded`` and a C-contiguous (k, n) operand."""
    if not _invariant.get():
        np.matmul(x, operand, out=out)
        return
    for start in range(0, x.shape[0], ROW_TILE):
        stop = start + ROW_TILE
        np.matmul(x[start:stop], operand, out=out[start:stop])


def product(x: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """x @ operand for a 2-D x (m, k) and a 2-D operand (k, n), batch-invariant (see above)."""
    rows = x.shape[0]
    tiles = padded(x)
    operand = np.ascontiguousarray(operand)
    out = np.empty((tiles.shape[0], operand.shape[1]), np.result_type(x, operand))
    multiply(tiles, operand, out)
    return out[:rows]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul, batch-invariant when ``b`` is a matrix (rows of ``a`` are independent then).

    A stack of matrices (``b`` of rank 3 or more) multiplies each item with the same shapes
    whatever the batch, so numpy's own loop is invariant already.
    """
    if b.ndim != 2 or a.ndim < 2:
        return np.matmul(a, b)
    result = product(a.reshape(-1, a.shape[-1]), b)
    return result.reshape(*a.shape[:-1], b.shape[1])
