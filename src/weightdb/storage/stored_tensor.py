"""A stored tensor as the engine and export see it: a grid of blocks read through the pool."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from weightdb.storage.blocking import BlockLayout
from weightdb.storage.buffer_pool import BufferPool


@dataclass
class StoredTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: BlockLayout
    locations: np.ndarray  # (grid rows, grid cols, 2): page id and slot of each block
    pool: BufferPool
    model: str | None = None  # who to charge page requests to

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @contextmanager
    def block(self, i: int, j: int) -> Iterator[np.ndarray]:
        """Block (i, j) of the matrix view, pinned while the ``with`` body runs."""
        page_id, slot = (int(x) for x in self.locations[i, j])
        with self.pool.pinned(page_id, self.model) as page:
            yield page.block(slot)

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
