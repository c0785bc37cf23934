"""A stored tensor as the engine and export see it: a grid of blocks read through the pool."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from weightdb.storage.blocking import BlockLayout
from weightdb.storage.buffer_pool import BufferPool
from weightdb.storage.page_format import COLUMN_MAJOR, ROW_MAJOR
from weightdb.storage.panel_order import PanelAxis


@dataclass
class StoredTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: BlockLayout
    locations: np.ndarray  # (grid rows, grid cols, 2): page id and slot of each block
    pool: BufferPool
    model: str | None = None  # who to charge page requests to
    _runs: dict[tuple[str, int], tuple[int, range] | None] = field(
        default_factory=dict, init=False, repr=False
    )  # panel -> (page, slots) or None, from ``locations``: never shared by copies
    _pins_at_once: int | None = field(default=None, init=False, repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @contextmanager
    def block(self, i: int, j: int) -> Iterator[np.ndarray]:
        """Block (i, j) of the matrix view, pinned while the ``with`` body runs."""
        page_id, slot = (int(x) for x in self.locations[i, j])
        with self.pool.pinned(page_id, self.model) as page:
            yield page.block(slot)

    def pins_at_once(self) -> int:
        """How many of this tensor's pages its pool can hold pinned at once: the engine's
        workers multiply by several panels at a time only if they all fit."""
        if self._pins_at_once is None:
            self._pins_at_once = self.pool.holds_at_once(
                set(self.locations[..., 0].ravel().tolist())
            )
        return self._pins_at_once

    @contextmanager
    def panel(self, axis: PanelAxis, index: int) -> Iterator[np.ndarray | None]:
        """Block column ``index`` (or block row, as its transpose) as one array viewing its
        page, pinned, when its blocks lie back to back there (see ``panel_order``); else None."""
        key = (axis, index)
        if key not in self._runs:
            grid = self.locations[:, index] if axis == "columns" else self.locations[index]
            page_id, first = (int(v) for v in grid[0])
            slots = range(first, first + len(grid))
            same_page = bool((grid[:, 0] == page_id).all())
            in_order = bool((grid[:, 1] == np.arange(slots.start, slots.stop)).all())
            self._runs[key] = (page_id, slots) if same_page and in_order else None
        found = self._runs[key]
        if found is None:
            yield None
            return
        page_id, slots = found
        with self.pool.pinned(page_id, self.model) as page:
            yield page.run(slots, ROW_MAJOR if axis == "columns" else COLUMN_MAJOR)

    def row_bands(self) -> Iterator[np.ndarray]:
        """The matrix view one block row at a time, so a huge tensor is never held whole."""
        grid_rows, grid_cols = self.layout.grid
        cols = self.layout.matrix_shape[1]
        for i in range(grid_rows):
            r0, r1, _, _ = self.layout.bounds(i, 0)
            band = np.empty((r1 - r0, cols), dtype=self.dtype)
            for j in range(grid_cols):
                _, _, c0, c1 = self.layout.bounds(i, j)
                with self.block(i, j) as block:
                    band[:, c0:c1] = block
            yield band

    def read(self) -> np.ndarray:
        """The whole tensor as an ordinary array."""
        matrix = np.empty(self.layout.matrix_shape, dtype=self.dtype)
        row = 0
        for band in self.row_bands():
            matrix[row : row + band.shape[0]] = band
            row += band.shape[0]
        return matrix.reshape(self.shape)
