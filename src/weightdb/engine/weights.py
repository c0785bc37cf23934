"""The contract between storage and the engine: a weight tensor readable block by block.

Storage hands the engine one ``StoredWeight`` per large initializer. The engine reads it only
through ``block``, so every byte flows through the buffer pool and is pinned only while an
operator uses it. ``InMemoryWeight`` is the same contract over a numpy array, for running a graph
without a database (benchmarks, checks at import).
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import numpy as np
import onnx
from onnx import numpy_helper

from weightdb.storage.blocking import BlockLayout, as_matrix, layout_for


class StoredWeight(Protocol):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: BlockLayout

    def block(self, i: int, j: int) -> AbstractContextManager[np.ndarray]:
        """Pin block (i, j) of the matrix view and yield a read-only 2-D view; unpinned on exit."""
        ...


def read_region(
    weight: StoredWeight, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype
) -> np.ndarray:
    """Copy rows [r0, r1) x cols [c0, c1) of the matrix view out of the blocks that cover it.

    Each block is pinned only for its copy, so the buffer pool never holds more than one block of
    this weight on our behalf.
    """
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


class InMemoryWeight:
    """A ``StoredWeight`` over a numpy array, cut on the same block grid storage would use."""

    def __init__(self, name: str, array: np.ndarray, block_shape: tuple[int, int]):
        self.name = name
        self.dtype = array.dtype
        self.shape = tuple(array.shape)
        self.layout = layout_for(self.shape, block_shape)
        self._matrix = as_matrix(np.ascontiguousarray(array))
        self._matrix.flags.writeable = False

    @contextmanager
    def block(self, i: int, j: int) -> Iterator[np.ndarray]:
        r0, r1, c0, c1 = self.layout.bounds(i, j)
        yield self._matrix[r0:r1, c0:c1]


def split_initializers(
    model: onnx.ModelProto, block_shape: tuple[int, int], min_elements: int = 1024
) -> tuple[onnx.ModelProto, dict[str, InMemoryWeight]]:
    """Move initializers of ``min_elements`` or more out of a copy of the graph, as storage does."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept, weights = [], {}
    for tensor in stripped.graph.initializer:
        dims = tuple(tensor.dims)
        if int(np.prod(dims)) >= min_elements:
            array = numpy_helper.to_array(tensor)
            weights[tensor.name] = InMemoryWeight(tensor.name, array, block_shape)
        else:
            kept.append(tensor)
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(kept)
    return stripped, weights
