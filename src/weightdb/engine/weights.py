"""The contract between storage and the engine: a weight tensor readable block by block.

Storage hands the engine one ``StoredWeight`` per large initializer. The engine reads it only
through ``block``, so every byte flows through the buffer pool and is pinned only while an
operator uses it. ``InMemoryWeight`` is the same contract over a numpy array: for running a
graph without a database (benchmarks, checks at import), and as the resident copy a prepared
model keeps of its weights when they fit in their pool (``keep_resident``).
"""

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import numpy as np

from weightdb.storage.blocking import BlockLayout, as_matrix
from weightdb.storage.buffer_pool import BufferPool


class StoredWeight(Protocol):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: BlockLayout

    def block(self, i: int, j: int) -> AbstractContextManager[np.ndarray]:
        """Pin block (i, j) of the matrix view and yield a read-only 2-D view; unpinned on exit."""
        ...


class InMemoryWeight:
    """A ``StoredWeight`` over a numpy array, cut on the same block grid storage would use.

    Kernels read ``matrix`` directly instead of copying blocks out of it. Blocks and regions
    come out contiguous, as storage's do, so a kernel multiplies the very same operands either
    way and results are bitwise equal to streaming the weight through the pool.
    """

    def __init__(self, name: str, array: np.ndarray, layout: BlockLayout):
        self.name = name
        self.dtype = array.dtype
        self.shape = tuple(array.shape)
        self.layout = layout
        self.matrix = as_matrix(np.ascontiguousarray(array))
        self.matrix.flags.writeable = False

    @contextmanager
    def block(self, i: int, j: int) -> Iterator[np.ndarray]:
        r0, r1, c0, c1 = self.layout.bounds(i, j)
        yield np.ascontiguousarray(self.matrix[r0:r1, c0:c1])

    def region(self, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """``read_region`` of this weight: a view when the region is contiguous."""
        (r0, r1), (c0, c1) = rows, cols
        return np.ascontiguousarray(self.matrix[r0:r1, c0:c1], dtype=dtype)


def read_region(
    weight: StoredWeight, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype
) -> np.ndarray:
    """Rows [r0, r1) x cols [c0, c1) of the matrix view as a contiguous array of ``dtype``.

    An in-memory weight answers with a view when it can. A stored one is copied out of the
    blocks that cover the region, each pinned only for its copy, so the buffer pool never holds
    more than one block of this weight on our behalf.
    """
    if isinstance(weight, InMemoryWeight):
        return weight.region(rows, cols, dtype)
    (r0, r1), (c0, c1) = rows, cols
    layout = weight.layout
    out = np.empty((r1 - r0, c1 - c0), dtype=dtype)
    for i in range(r0 // layout.block_rows, -(-r1 // layout.block_rows)):
        for j in range(c0 // layout.block_cols, -(-c1 // layout.block_cols)):
            br0, br1, bc0, bc1 = layout.bounds(i, j)
            lo_r, hi_r, lo_c, hi_c = max(r0, br0), min(r1, br1), max(c0, bc0), min(c1, bc1)
            with weight.block(i, j) as block:
                out[lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0] = block[
                    lo_r - br0 : hi_r - br0, lo_c - bc0 : hi_c - bc0
                ]
    return out


def materialize(weight: StoredWeight) -> np.ndarray:
    """The whole tensor as an ordinary array, for small weights used by non-blocked ops."""
    rows, cols = weight.layout.matrix_shape
    return read_region(weight, (0, rows), (0, cols), weight.dtype).reshape(weight.shape)


class _Residency:
    """What one prepared model holds of its pool's resident bytes, released when it dies."""

    def __init__(self, owner: object, pool: BufferPool) -> None:
        self.pool = pool
        self.nbytes = 0
        weakref.finalize(owner, self.release)

    def reserve(self, nbytes: int) -> bool:
        if not self.pool.reserve(nbytes):
            return False
        self.nbytes += nbytes
        return True

    def release(self) -> None:
        self.pool.release(self.nbytes)


class ResidentWeight(InMemoryWeight):
    """A stored weight read through its pool once and kept, for one prepared model.

    Regions that are not contiguous in the matrix (the column panels of a MatMul weight) are
    copied once and kept as well, while the budget allows: multiplying by a strided view instead
    can change a GEMM's last bits, and results must not depend on the budget.
    """

    def __init__(self, weight: StoredWeight, residency: _Residency):
        super().__init__(weight.name, materialize(weight), weight.layout)
        self._residency = residency
        self._regions: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def region(self, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        (r0, r1), (c0, c1) = rows, cols
        view = self.matrix[r0:r1, c0:c1]
        if view.flags.c_contiguous and view.dtype == dtype:
            return view
        key = (rows, cols, np.dtype(dtype))
        kept = self._regions.get(key)
        if kept is None:
            kept = np.ascontiguousarray(view, dtype=dtype)
            with self._lock:
                if key not in self._regions and self._residency.reserve(kept.nbytes):
                    kept.flags.writeable = False
                    self._regions[key] = kept
        return kept


def keep_resident(owner: object, weights: Sequence[StoredWeight]) -> dict[str, ResidentWeight]:
    """Resident copies of ``weights`` (name -> copy) that live as long as ``owner``, if they fit.

    Pinning and copying every block on every call costs more than the arithmetic of a
    batch-256 MLP. When the pool grants a reservation for all of ``weights`` (copies are charged
    to its budget, at most half of it, evicting pages), they are read through the pool once and
    kept; otherwise (a budget below the model, weights outside a pool) the result is empty and
    every call streams. The pool's budget thus bounds pages and copies together.
    """
    pools = {getattr(w, "pool", None) for w in weights}
    if len(pools) != 1 or not isinstance(pool := pools.pop(), BufferPool):
        return {}
    residency = _Residency(owner, pool)
    if not residency.reserve(sum(int(np.prod(w.shape)) * w.dtype.itemsize for w in weights)):
        return {}
    return {w.name: ResidentWeight(w, residency) for w in weights}
