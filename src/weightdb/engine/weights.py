"""The contract between storage and the engine: a weight tensor readable block by block.

Storage hands the engine one ``StoredWeight`` per large initializer. The engine reads it only
through ``region``, ``panels`` and ``take_rows``, so every byte flows through the buffer pool
and is pinned only while an operator uses it. A pool that holds a model's pages holds its
weights: panels are views of the pages, so weights shared by several models are in memory once.
``InMemoryWeight`` is the same contract over a numpy array, for running a graph without a
database (benchmarks, checks at import).
"""

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import numpy as np

from weightdb.storage.blocking import BlockLayout, as_matrix
from weightdb.storage.panel_order import PanelAxis


class StoredWeight(Protocol):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: BlockLayout

    def pins_at_once(self) -> int:
        """How many pins of this weight's pages may be held at once (workers share products
        only when each can pin its own page)."""
        ...

    def panel_groups(self, axis: PanelAxis, indices: Sequence[int]) -> list[list[int]]:
        """Panels (block columns, or block rows for ``x @ W.T``) grouped so that each group is
        one pin: the engine's unit of work."""
        ...

    def panels(
        self, axis: PanelAxis, group: list[int]
    ) -> AbstractContextManager[list[np.ndarray | None]]:
        """Pin a group and yield each panel as a C-contiguous (K, width) array where storage
        holds it so, else None (the engine then copies blocks)."""
        ...

    def region(self, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """Rows [r0, r1) x cols [c0, c1) of the matrix view, copied (or viewed, in memory) as
        one contiguous array of ``dtype``."""
        ...

    def resident_matrix(self, rows: np.ndarray) -> np.ndarray | None:
        """The whole matrix view as one array if it is resident so (kept by the pool, or in
        memory), else None; a gather about to read ``rows`` (row ids, any shape) asks."""
        ...

    def take_rows(self, ids: np.ndarray) -> np.ndarray:
        """W[ids] for valid row ids (1-D) of the matrix view, as a (len(ids), columns) array,
        each page pinned only while rows are copied out of it."""
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
        self._panels: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def pins_at_once(self) -> int:
        return sys.maxsize

    def panel_groups(self, axis: PanelAxis, indices: Sequence[int]) -> list[list[int]]:
        return [[index] for index in indices]

    @contextmanager
    def panels(self, axis: PanelAxis, group: list[int]) -> Iterator[list[np.ndarray]]:
        yield [self._panel(axis, index) for index in group]

    def resident_matrix(self, rows: np.ndarray) -> np.ndarray:
        return self.matrix

    def take_rows(self, ids: np.ndarray) -> np.ndarray:
        return np.take(self.matrix, ids, axis=0)

    def _panel(self, axis: PanelAxis, index: int) -> np.ndarray:
        """The panel as storage would lay it out, copied once and kept."""
        key = (axis, index)
        kept = self._panels.get(key)
        if kept is None:
            if axis == "rows":
                r0, r1, _, _ = self.layout.bounds(index, 0)
                kept = np.ascontiguousarray(self.matrix[r0:r1].T)
            else:
                _, _, c0, c1 = self.layout.bounds(0, index)
                kept = np.ascontiguousarray(self.matrix[:, c0:c1])
            kept.flags.writeable = False
            with self._lock:
                kept = self._panels.setdefault(key, kept)
        return kept

    def region(self, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """The protocol's ``region``: a view when the region is contiguous."""
        (r0, r1), (c0, c1) = rows, cols
        return np.ascontiguousarray(self.matrix[r0:r1, c0:c1], dtype=dtype)


def materialize(weight: StoredWeight) -> np.ndarray:
    """The whole tensor as an ordinary array, for small weights used by non-blocked ops."""
    rows, cols = weight.layout.matrix_shape
    return weight.region((0, rows), (0, cols), weight.dtype).reshape(weight.shape)
