"""Matrix products whose rows do not depend on the batch they arrive in.

A BLAS chooses kernels and splits work by the shapes it is given, and kernels differ in the
order they sum in. Measured with OpenBLAS 0.3.31: a lone row goes to a matrix-vector kernel
with its own order; products of at most 10^6 multiply-adds go to a small-matrix kernel with
another; rows left over after a kernel's unrolled groups (of 4, 8 or 16) take a tail path that
may sum differently again; and the Haswell kernels (used on some AMD EPYC) give a row different
bits at different positions of one call of 16 rows. So, while batch invariance is on (the
default), every product over rows is a sequence of BLAS calls whose row counts the engine
chooses from the operand's shape alone, BLAS single-threaded (``threads``), with a C-contiguous
(k, n) operand whether it is a page, a copy or an array in memory. A row's bits then depend on
the row alone.

How the rows are cut (``tiling``) is measured once per operand shape and process, with fixed
random data, not assumed:

- flexible: a row gets the same bits at every position of calls of 512 rows and of every
  probed multiple of 16 down to ``low`` rows. Batches are padded to a multiple of 16 (at least
  ``low``) and cut into calls of multiples of 16 of nearly equal size, at most 512 rows. A batch
  of at most ``min_rows`` rows, the fewest of 1, 2, 4 or 8 that also agree (or ``low``), is one
  call of ``min_rows`` rows: a lone row costs a product of 2 or 8 rows, not 16, and a large
  batch runs at the BLAS's own speed. OpenBLAS's SkylakeX kernels qualify.
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
from itertools import pairwise

import numpy as np
import threadpoolctl

from weightdb.engine import threads

FLEXIBLE_STEP = 16
MAX_CALL_ROWS = 512
PROBED_MULTIPLES = (256, 128, 96, 64, 48, 32, 16)  # of FLEXIBLE_STEP, below MAX_CALL_ROWS
SMALL_CALLS = (1, 2, 4, 8)
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
    """Calls of exactly ``min_rows`` rows for a batch that small, else of multiples of ``step``
    rows, at most ``max_rows`` each; a fixed tiling has all three equal."""

    min_rows: int
    max_rows: int
    step: int

    def padded_rows(self, rows: int) -> int:
        """How many rows ``rows`` become once padded for this tiling."""
        if rows <= self.min_rows:
            return self.min_rows
        return -(-rows // self.step) * self.step


UNTILED = Tiling(1, 1 << 62, 1)


def tiling(k: int, n: int, dtype: np.dtype) -> Tiling:
    """How to cut the rows of products with a (k, n) operand of ``dtype`` (see above)."""
    return _probed(k, n, np.dtype(dtype).str) if _invariant.get() else UNTILED


@cache
def _probed(k: int, n: int, dtype: str) -> Tiling:
    rng = np.random.default_rng(0)
    operand = rng.standard_normal((k, n), np.float32).astype(dtype)
    rows = [rng.standard_normal(k, np.float32).astype(dtype) for _ in range(2)]
    # Other rows of every call, drawn once: drawing them per call took most of a probe's time.
    others = rng.standard_normal((MAX_CALL_ROWS, k), np.float32).astype(dtype)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        flexible = _flexible(operand, rows, others)
        if flexible is not None:
            return flexible
        tile = next(t for t in FIXED_TILES if _agree(operand, rows, t, others))
    return Tiling(tile, tile, tile)


def _flexible(operand: np.ndarray, rows: list[np.ndarray], others: np.ndarray) -> Tiling | None:
    """The flexible tiling (see above), if calls of 512 rows agree with calls of at least one
    quarter as many."""
    reference = _agree(operand, rows, MAX_CALL_ROWS, others)
    if reference is None:
        return None
    low = MAX_CALL_ROWS
    for count in PROBED_MULTIPLES:
        if _agree(operand, rows, count, others) != reference:
            break
        low = count
    if low > MAX_CALL_ROWS // 4:
        return None
    min_rows = low
    if low == FLEXIBLE_STEP:  # a small batch may be one call below a step
        agreeing = (c for c in SMALL_CALLS if _agree(operand, rows, c, others) == reference)
        min_rows = next(agreeing, low)
    return Tiling(min_rows, MAX_CALL_ROWS, FLEXIBLE_STEP)


def _agree(
    operand: np.ndarray, rows: list[np.ndarray], count: int, others: np.ndarray
) -> tuple[bytes, ...] | None:
    """Each of ``rows``'s product bits if they are the same at every position of a call of
    ``count`` rows (up to 16 positions, spread over it, among the random ``others``), else
    None."""
    positions = np.unique(np.linspace(0, count - 1, min(count, 16)).astype(int))
    products = []
    for row in rows:
        x = others[:count].copy()
        x[positions] = row
        bits = {product.tobytes() for product in np.matmul(x, operand)[positions]}
        if len(bits) > 1:
            return None
        products.append(bits.pop())
    return tuple(products)


def padded(x: np.ndarray, rows: int) -> np.ndarray:
    """A C-contiguous 2-D ``x`` with its rows padded with zeros to ``rows``
    (``Tiling.padded_rows``)."""
    x = np.ascontiguousarray(x)
    if x.shape[0] == rows:
        return x
    out = np.zeros((rows, x.shape[1]), x.dtype)
    out[: x.shape[0]] = x
    return out


def multiply(
    x: np.ndarray, operand: np.ndarray, out: np.ndarray, cut: Tiling, parallel: bool = False
) -> None:
    """out = x @ operand for an ``x`` padded for ``cut`` (``Tiling.padded_rows``), its rows cut
    into calls by ``cut``; with ``parallel``, the calls are shared among the engine's workers.

    Fixed tiles go to numpy as stacks of (tile, k) matrices: its loop makes the same call per
    tile as a Python loop would (the bits are equal), without a Python step per tile. Otherwise
    the calls are as equal as whole steps allow, and more of them (never below ``min_rows`` or
    one step) when shared. Splitting the first axis of ``out`` is always a view, so the
    products land in ``out``. ``UNTILED`` (batch invariance off) is one call over all rows.
    """
    rows, (k, n) = x.shape[0], operand.shape
    fixed = cut.min_rows == cut.max_rows
    unit = cut.min_rows if fixed else cut.step
    smallest = unit if fixed else max(cut.step, cut.min_rows)
    calls = 1 if fixed else -(-rows // cut.max_rows)
    if parallel:
        calls = max(calls, min(2 * threads.workers(), rows // smallest))
    units = rows // unit
    edges = [unit * (units * call // calls) for call in range(calls)] + [rows]

    def call(span: tuple[int, int]) -> None:
        start, stop = span
        if fixed:
            stacked = out[start:stop].reshape(-1, unit, n)
            np.matmul(x[start:stop].reshape(-1, unit, k), operand, out=stacked)
        else:
            np.matmul(x[start:stop], operand, out=out[start:stop])

    threads.run_all(call, list(pairwise(edges)), parallel)


def product(x: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """x @ operand for a 2-D x (m, k) and a 2-D operand (k, n), batch-invariant (see above),
    shared among the engine's workers when large."""
    if not _invariant.get():  # the BLAS's own choices: no copy of a transposed operand
        return np.matmul(x, operand)
    operand = np.ascontiguousarray(operand)
    cut = tiling(*operand.shape, operand.dtype)
    rows = padded(x, cut.padded_rows(x.shape[0]))
    out = np.empty((rows.shape[0], operand.shape[1]), np.result_type(x, operand))
    multiply(rows, operand, out, cut, threads.worth(rows.shape[0] * operand.size))
    return out[: x.shape[0]]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul, batch-invariant when ``b`` is a matrix (rows of ``a`` are independent then).

    A stack of matrices (``b`` of rank 3 or more) multiplies each item with the same shapes
    whatever the batch, so numpy's own loop is invariant already; a large stack is cut along
    its first axis among the engine's workers, each item still one call.
    """
    if b.ndim == 2 and a.ndim >= 2:
        result = product(a.reshape(-1, a.shape[-1]), b)
        return result.reshape(*a.shape[:-1], b.shape[1])
    if a.ndim < 3 or a.shape[:-2] != b.shape[:-2]:
        return np.matmul(a, b)
    out = np.empty((*a.shape[:-1], b.shape[-1]), np.result_type(a, b))
    parallel = threads.worth(out.size * a.shape[-1]) and a.shape[0] > 1

    def piece(span: tuple[int, int]) -> None:
        np.matmul(a[span[0] : span[1]], b[span[0] : span[1]], out=out[span[0] : span[1]])

    threads.run_all(piece, threads.shares(a.shape[0], parallel), parallel)
    return out
