"""Operators whose weight operand is a stored tensor, executed block by block.

A weight is the relation {(i, j) -> block}. ``x @ W`` is a join of x's column ranges with W's
blocks on the inner index i and a sum grouped by the output block column j; we let BLAS do the
grouped sum by handing it a panel: the blocks of one or more adjacent block columns stacked over
all i (at most ``PANEL_BYTES``, at least one block column). One GEMM per panel keeps the block
loop coarse and the multiply fast; a panel that is exactly one block is used in place, pinned for
the duration of its GEMM, otherwise it is copied out block by block and each block is pinned
only for its copy. An embedding lookup is a join of the requested ids with the row blocks that
hold them: blocks holding no requested id are never read.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import numpy as np

from weightdb.engine.errors import ExecutionError
from weightdb.engine.ops import Kernel
from weightdb.engine.ops.nn import convolve, gemm_epilogue
from weightdb.engine.weights import StoredWeight, read_region

# Scratch bytes for one panel: large enough for one GEMM per weight of a BERT-base-sized layer,
# small next to a buffer-pool budget.
PANEL_BYTES = 8 << 20


def _panels(start: int, stop: int, block: int, bytes_per_line: int) -> list[tuple[int, int]]:
    """[start, stop) cut at block boundaries into panels of at most PANEL_BYTES (>= one block)."""
    width = block * max(1, PANEL_BYTES // (block * bytes_per_line))
    edges = [start, *range((start // width + 1) * width, stop, width), stop]
    return list(pairwise(edges))


@contextmanager
def _panel(
    weight: StoredWeight, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype
) -> Iterator[np.ndarray]:
    layout = weight.layout
    i, j = rows[0] // layout.block_rows, cols[0] // layout.block_cols
    if weight.dtype == dtype and layout.bounds(i, j) == (*rows, *cols):
        with weight.block(i, j) as block:
            yield block
    else:
        yield read_region(weight, rows, cols, dtype)


def matmul(x: np.ndarray, weight: StoredWeight) -> np.ndarray:
    """x @ W for a 2-D stored W of shape (K, N); x has any leading dimensions."""
    k, n = weight.layout.matrix_shape
    rows = x.reshape(-1, k)
    out = np.empty((rows.shape[0], n), x.dtype)
    for c0, c1 in _panels(0, n, weight.layout.block_cols, k * x.dtype.itemsize):
        with _panel(weight, (0, k), (c0, c1), x.dtype) as panel:
            np.matmul(rows, panel, out=out[:, c0:c1])
    return out.reshape(*x.shape[:-1], n)


def matmul_transposed(
    x: np.ndarray, weight: StoredWeight, first: int = 0, end: int | None = None
) -> np.ndarray:
    """x @ W[first:end].T for W viewed as a matrix (N, K): Gemm with transB=1, Conv kernels."""
    n, k = weight.layout.matrix_shape
    end = n if end is None else end
    out = np.empty((x.shape[0], end - first), x.dtype)
    for r0, r1 in _panels(first, end, weight.layout.block_rows, k * x.dtype.itemsize):
        with _panel(weight, (r0, r1), (0, k), x.dtype) as panel:
            np.matmul(x, panel.T, out=out[:, r0 - first : r1 - first])
    return out


def gather_rows(weight: StoredWeight, indices: np.ndarray) -> np.ndarray:
    """W[indices] along axis 0, reading only the row blocks that hold a requested index."""
    layout = weight.layout
    rows, cols = layout.matrix_shape
    ids = indices.reshape(-1).astype(np.int64, copy=False)
    ids = np.where(ids < 0, ids + rows, ids)
    outside = (ids < 0) | (ids >= rows)
    if outside.any():
        bad = int(indices.reshape(-1)[outside][0])
        raise ExecutionError(
            f"index {bad} is out of range for {weight.name!r}, which has {rows} rows"
        )
    out = np.empty((ids.size, cols), weight.dtype)
    block_of = ids // layout.block_rows
    order = np.argsort(block_of, kind="stable")
    blocks, starts = np.unique(block_of[order], return_index=True)
    ends = [*starts[1:], ids.size]
    grid_cols = layout.grid[1]
    for i, start, stop in zip(blocks.tolist(), starts.tolist(), ends, strict=True):
        positions = order[start:stop]
        local = ids[positions] - i * layout.block_rows
        for j in range(grid_cols):
            _, _, c0, c1 = layout.bounds(i, j)
            with weight.block(i, j) as block:
                out[positions, c0:c1] = block[local]
    return out.reshape(*indices.shape, *weight.shape[1:])


def _matmul_kernel(x: np.ndarray, weight: StoredWeight) -> np.ndarray:
    return matmul(x, weight)


def _gemm_kernel(
    a: np.ndarray,
    weight: StoredWeight,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    a = a.T if transA else a
    product = matmul_transposed(a, weight) if transB else matmul(a, weight)
    return gemm_epilogue(product, c, alpha, beta)


def _gather_kernel(weight: StoredWeight, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    return gather_rows(weight, indices)


def _conv_kernel(
    x: np.ndarray, weight: StoredWeight, bias: np.ndarray | None = None, **attributes
) -> np.ndarray:
    def product(cols: np.ndarray, first: int, end: int) -> np.ndarray:
        return matmul_transposed(cols, weight, first, end)

    return convolve(x, bias, weight.shape, product, **attributes)


def blocked_kernel(
    op_type: str, position: int, weight: StoredWeight, attributes: dict
) -> Kernel | None:
    """The blockwise kernel for ``op_type`` with a stored weight as input ``position``, if any.

    ``None`` means the weight must be materialized for this use (e.g. a bias, a LayerNorm scale,
    a batched MatMul operand, a Gather along another axis).
    """
    if op_type == "MatMul" and position == 1 and len(weight.shape) == 2:
        return _matmul_kernel
    if op_type == "Gemm" and position == 1:
        return _gemm_kernel
    if (
        op_type == "Gather"
        and position == 0
        and attributes.get("axis", 0) in (0, -len(weight.shape))
    ):
        return _gather_kernel
    if op_type == "Conv" and position == 1:
        return _conv_kernel
    return None
