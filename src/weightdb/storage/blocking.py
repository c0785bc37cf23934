"""How a tensor of any rank is cut into 2-D blocks.

A tensor is viewed as a matrix: 0-d as (1, 1), 1-d of n as (n, 1), N-d as (shape[0],
prod(shape[1:])) -- so a conv kernel (out, in, kh, kw) becomes (out, in*kh*kw) and an embedding
stays (vocab, dim). The matrix is cut on a grid of blocks of the database's block shape (R, C),
clipped to the matrix, so a tensor no larger than one block is stored as one block.

Edge blocks are stored at their true size rather than padded to (R, C): a page's block
directory records each block's shape, so padding would only cost bytes. (DESIGN.md suggested
padding; netsDB pads because its blocks are fixed-size objects. We do not need to.)

Narrow matrices (fewer columns than C) get taller blocks, so that a block still holds about
R*C elements: a bias of a million floats becomes a few blocks, not thousands of tiny ones.
"""

from dataclasses import dataclass
from math import prod

import numpy as np

from weightdb.storage.page_format import COLUMN_MAJOR, ROW_MAJOR


@dataclass(frozen=True)
class BlockLayout:
    """The block grid of one tensor. ``block_rows`` x ``block_cols`` is the nominal block."""

    shape: tuple[int, ...]
    block_rows: int
    block_cols: int

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return matrix_shape(self.shape)

    @property
    def grid(self) -> tuple[int, int]:
        rows, cols = self.matrix_shape
        return -(-rows // self.block_rows), -(-cols // self.block_cols)

    @property
    def num_blocks(self) -> int:
        grid_rows, grid_cols = self.grid
        return grid_rows * grid_cols

    def bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Row start, row stop, column start, column stop of block (i, j) in the matrix view."""
        rows, cols = self.matrix_shape
        r0, c0 = i * self.block_rows, j * self.block_cols
        return r0, min(r0 + self.block_rows, rows), c0, min(c0 + self.block_cols, cols)

    def block_shape(self, i: int, j: int) -> tuple[int, int]:
        r0, r1, c0, c1 = self.bounds(i, j)
        return r1 - r0, c1 - c0

    def positions(self):
        """Block positions in row-major order, the order blocks are exported in."""
        grid_rows, grid_cols = self.grid
        for i in range(grid_rows):
            for j in range(grid_cols):
                yield i, j

    def block_nbytes(self, i: int, j: int, itemsize: int) -> int:
        rows, cols = self.block_shape(i, j)
        return rows * cols * itemsize


def panel_runs(layout: BlockLayout, axis: str | None) -> list[tuple[list[tuple[int, int]], int]]:
    """The runs of block positions to store back to back, with the storage order of their
    blocks (see ``panel_order``): block columns row-major, block rows column-major, or, for a
    weight read otherwise, each block row row-major."""
    grid_rows, grid_cols = layout.grid
    if axis == "columns":
        return [([(i, j) for i in range(grid_rows)], ROW_MAJOR) for j in range(grid_cols)]
    order = COLUMN_MAJOR if axis == "rows" else ROW_MAJOR
    return [([(i, j) for j in range(grid_cols)], order) for i in range(grid_rows)]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], 1
    return shape[0], prod(shape[1:])


def layout_for(shape: tuple[int, ...], block_shape: tuple[int, int]) -> BlockLayout:
    """Choose the block grid of a tensor of ``shape`` under the database block shape (R, C)."""
    nominal_rows, nominal_cols = block_shape
    rows, cols = matrix_shape(shape)
    if rows == 0 or cols == 0:  # one block row or column, so import and export loop 0 times
        return BlockLayout(tuple(shape), max(1, rows), max(1, cols))
    block_cols = max(1, min(nominal_cols, cols))
    # Keep about R*C elements per block when the matrix is narrower than C.
    widened_rows = max(nominal_rows, (nominal_rows * nominal_cols) // block_cols)
    block_rows = max(1, min(widened_rows, rows))
    return BlockLayout(tuple(shape), block_rows, block_cols)


def as_matrix(array: np.ndarray) -> np.ndarray:
    """The 2-D view of ``array`` that blocks are cut from (a view, never a copy when contiguous)."""
    return array.reshape(matrix_shape(array.shape))
