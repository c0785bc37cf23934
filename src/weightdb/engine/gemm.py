"""Matrix products whose rows do not depend on the batch they arrive in.

A BLAS chooses kernels and splits work by the shapes it is given, and kernels differ in the
order they sum in. Measured with OpenBLAS's Haswell kernels (used on AMD EPYC): the same row
gets different last bits in a batch of 7, 64 or 300 rows, and even within one call of 16 rows
its bits depend on its position. So, while batch invariance is on (the default), every product
over rows is a sequence of BLAS calls whose row counts the engine chooses from the operand's
shape alone, BLAS single-threaded (``threads``), with a C-contiguous (k, n) operand whether it
is a page, a copy or an array in memory. A row's bits then depend on the row alone.

How the rows are cut (``tiling``) is measured once per operand shape and process, with fixed
random data, not assumed:

- flexible: if a row gets the same bits at every position of calls of any multiple of 16 rows
  (probed at 16, 32, 48, 128, 256 and ``MAX_CALL_ROWS``), rows are padded to a multiple of 16
  and multiplied in calls of up to ``MAX_CALL_ROWS``. OpenBLAS's SkylakeX kernels qualify: a
  lone row then costs a 16-row product and a large batch runs at the BLAS's full speed.
- fixed: otherwise, the largest tile of at most 32 rows in which a row gets the same bits at
  every position; every call has exactly that many rows (8 with the Haswell kernels), which
  costs a large batch the BLAS's repacking of the operand for every tile.

``batch_invariance(False)`` trades the guarantee for the BLAS's own choices, faster at small
batches; ``benchmarks/results/engine.md`` shows the difference per batch size.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache

import numpy as np
import threadpoolctl

FLEXIBLE_BASE = 16
MAX_CALL_ROWS = 512
FIXED_TILES = (32, 16, 8, 4, 2, 1)

_invariant: ContextVar[bool] = ContextVar("weightdb_batch_invariant", default=True)


@contextmanager
def batch_invariance(enabled: bool) -> Iterator[None]:
    """Compute products in this context with (default) or without fixed row tiling."""
    token = _invariant.set(enabled)
    try:
        yield
    finally:
        _invariant.reset(token)


@dataclass(frozen=True)
class Tiling:
    """Rows are padded to a multiple of ``base`` and multiplied ``call_rows`` at most per call
    (always exactly ``base`` when ``call_rows == base``)."""

    base: int
    call_rows: int


UNTILED = Tiling(1, 1 << 62)


def tiling(k: int, n: int, dtype: np.dtype) -> Tiling:
    """How to cut the rows of products with a (k, n) operand of ``dtype`` (see above)."""
    return _probed(k, n, np.dtype(dtype).str) if _invariant.get() else UNTILED


@cache
def _probed(k: int, n: int, dtype: str) -> Tiling:
    rng = np.random.default_rng(0)
    operand = rng.standard_normal((k, n)).astype(dtype)
    base = FLEXIBLE_BASE
    sizes = (base, 2 * base, 3 * base, 8 * base, 16 * base, MAX_CALL_ROWS)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        if _same_bits(operand, sizes, rng):
            return Tiling(base, MAX_CALL_ROWS)
        tile = next(t for t in FIXED_TILES if _same_bits(operand, (t,), rng))
    return Tiling(tile, tile)


def _same_bits(operand: np.ndarray, sizes: tuple[int, ...], rng: np.random.Generator) -> bool:
    """Whether a row gets the same bits at every position of calls of each of ``sizes`` rows
    (placed at up to 16 positions per call, spread over it), for two random rows."""
    for _ in range(2):
        row = rng.standard_normal(operand.shape[0]).astype(operand.dtype)
        results = set()
        for rows in sizes:
            positions = np.unique(np.linspace(0, rows - 1, min(rows, 16)).astype(int))
            x = rng.standard_normal((rows, operand.shape[0])).astype(operand.dtype)
            x[positions] = row
            product = np.matmul(x, operand)
            results.update(product[p].tobytes() for p in positions)
        if len(results) > 1:
            return False
    return True


def padded(x: np.ndarray, base: int) -> np.ndarray:
    """A C-contiguous 2-D ``x`` with its rows padded with zeros to a multiple of ``base``."""
    x = np.ascontiguousarray(x)
    rows = x.shape[0]
    if rows % base == 0:
        return x
    out = np.zeros((rows + base - rows % base, x.shape[1]), x.dtype)
    out[:rows] = x
    return out


def multiply(x: np.ndarray, operand: np.ndarray, out: np.ndarray, cut: Tiling) -> None:
    """out = x @ operand for an ``x`` from ``padded(x, cut.base)``, its rows cut by ``cut``.

    Fixed tiles go to numpy as one stack of (tile, k) matrices: its loop makes the same call
    per tile as a Python loop would (the bits are equal), without a Python step per tile.
    Splitting the first axis of ``out`` is always a view, so the products land in ``out``.
    ``UNTILED`` (batch invariance off) is one call over all rows.
    """
    if cut.call_rows == cut.base:
        stacked = out.reshape(-1, cut.base, out.shape[1])
        np.matmul(x.reshape(-1, cut.base, x.shape[1]), operand, out=stacked)
    else:
        for start in range(0, x.shape[0], cut.call_rows):
            stop = start + cut.call_rows
            np.matmul(x[start:stop], operand, out=out[start:stop])


def product(x: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """x @ operand for a 2-D x (m, k) and a 2-D operand (k, n), batch-invariant (see above)."""
    if not _invariant.get():  # the BLAS's own choices: no copy of a transposed operand
        return np.matmul(x, operand)
    operand = np.ascontiguousarray(operand)
    cut = tiling(*operand.shape, operand.dtype)
    rows = padded(x, cut.base)
    out = np.empty((rows.shape[0], operand.shape[1]), np.result_type(x, operand))
    multiply(rows, operand, out, cut)
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
