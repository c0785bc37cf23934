"""Operators whose weight operand is a stored tensor, executed block by block.

A weight is the relation {(i, j) -> block}. ``x @ W`` is a join of x's column ranges with W's
blocks on the inner index and a sum grouped by the output block (see ``_product`` for the
physical plan). An embedding lookup is a join of the requested ids with the row blocks that
hold them: blocks holding no requested id are never read. Every page is pinned only while an
operator copies or multiplies its blocks.
"""

from itertools import pairwise
from math import prod

import numpy as np

from weightdb.engine import gemm, threads
from weightdb.engine.errors import ExecutionError
from weightdb.engine.ops import Kernel
from weightdb.engine.ops.nn import convolve, gemm_epilogue
from weightdb.engine.weights import StoredWeight
from weightdb.storage.panel_order import PanelAxis


def _spans(start: int, stop: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) cut at multiples of ``block``."""
    edges = [start, *range((start // block + 1) * block, stop, block), stop]
    return list(pairwise(edges))


def _operand(
    weight: StoredWeight,
    axis: PanelAxis,
    span: tuple[int, int],
    dtype: np.dtype,
    run: np.ndarray | None,
) -> np.ndarray:
    """The (K, width) operand for output columns ``span``: W[:, span], or W[span].T for a
    block-row panel, C-contiguous. ``run`` is the whole panel as storage holds it (a view of its
    page, see ``panel_order``), or None: then the blocks are copied out."""
    layout = weight.layout
    block = layout.block_rows if axis == "rows" else layout.block_cols
    first = span[0] // block * block
    if run is not None and run.dtype == dtype:
        if span == (first, first + run.shape[1]):
            return run
        return np.ascontiguousarray(run[:, span[0] - first : span[1] - first])
    if axis == "rows":
        inner = layout.matrix_shape[1]
        return np.ascontiguousarray(weight.region(span, (0, inner), dtype).T)
    return weight.region((0, layout.matrix_shape[0]), span, dtype)


def _product(
    x: np.ndarray, weight: StoredWeight, transposed: bool, first: int, end: int
) -> np.ndarray:
    """x @ W[:, first:end], or x @ W[first:end].T when ``transposed``; x is 2-D (m, k).

    The join of x's columns with W's blocks on the inner index, summed per output block, runs
    one panel at a time: a panel is a block column (or block row when transposed) spanning the
    whole inner dimension, so each output element is one BLAS dot product over all of K, never
    a sum of per-block partial products (one small GEMM per block costs m * n extra additions
    per block and a BLAS call each). The panels one page holds are multiplied under one pin,
    and such groups are the engine's parallel tasks. Panels and row tiles (``gemm``) depend on
    shapes alone, so results do not depend on the budget, the storage layout, the threads or
    the batch.
    """
    layout = weight.layout
    axis: PanelAxis = "rows" if transposed else "columns"
    block = layout.block_rows if transposed else layout.block_cols
    inner = layout.matrix_shape[1] if transposed else layout.matrix_shape[0]
    rows = x.shape[0]
    spans = {span[0] // block: span for span in _spans(first, end, block)}
    cuts = {w: gemm.tiling(inner, w, x.dtype) for w in {b - a for a, b in spans.values()}}
    padded = {n: gemm.padded(x, n) for n in {cut.padded_rows(rows) for cut in cuts.values()}}
    out = np.empty((max(padded), end - first), x.dtype)

    def multiply(group: list[int]) -> None:
        with weight.panels(axis, group) as runs:
            for index, run in zip(group, runs, strict=True):
                span = spans[index]
                cut = cuts[span[1] - span[0]]
                tiles = padded[cut.padded_rows(rows)]
                operand = _operand(weight, axis, span, x.dtype, run)
                target = out[: tiles.shape[0], span[0] - first : span[1] - first]
                gemm.multiply(tiles, operand, target, cut)

    groups = weight.panel_groups(axis, list(spans))
    work = max(padded) * inner * (end - first)
    parallel = threads.worth(work) and weight.pins_at_once() > threads.workers()
    if parallel:
        groups = _shared(groups, len(spans), threads.workers())
    threads.run_all(multiply, groups, parallel)
    return out[:rows]


def _shared(groups: list[list[int]], panels: int, workers: int) -> list[list[int]]:
    """Groups cut into pieces of at most a 1 / (2 * workers) share of the panels, each still
    one pin: a page often holds a whole layer's panels, and one task per page would leave the
    other workers idle."""
    size = -(-panels // (2 * workers))
    return [group[i : i + size] for group in groups for i in range(0, len(group), size)]


def matmul(x: np.ndarray, weight: StoredWeight) -> np.ndarray:
    """x @ W for a 2-D stored W of shape (K, N); x has any leading dimensions."""
    k, n = weight.layout.matrix_shape
    out = _product(x.reshape(-1, k), weight, False, 0, n)
    return out.reshape(*x.shape[:-1], n)


def matmul_transposed(
    x: np.ndarray, weight: StoredWeight, first: int = 0, end: int | None = None
) -> np.ndarray:
    """x @ W[first:end].T for W viewed as a matrix (N, K): Gemm with transB=1, Conv kernels."""
    n = weight.layout.matrix_shape[0]
    return _product(x, weight, True, first, n if end is None else end)


def gather_rows(weight: StoredWeight, indices: np.ndarray) -> np.ndarray:
    """W[indices] along axis 0, reading only the row blocks that hold a requested index."""
    return _gathered(weight, _row_ids(weight, indices)).reshape(*indices.shape, *weight.shape[1:])


def _row_ids(weight: StoredWeight, indices: np.ndarray) -> np.ndarray:
    """``indices`` flattened to rows of W's matrix view, negatives counted from the end."""
    rows = weight.layout.matrix_shape[0]
    ids = indices.reshape(-1).astype(np.int64, copy=False)
    ids = np.where(ids < 0, ids + rows, ids)
    outside = (ids < 0) | (ids >= rows)
    if outside.any():
        bad = int(indices.reshape(-1)[outside][0])
        raise ExecutionError(
            f"index {bad} is out of range for {weight.name!r}, which has {rows} rows"
        )
    return ids


def _gathered(weight: StoredWeight, ids: np.ndarray) -> np.ndarray:
    """W[ids] for valid row ids, as a (len(ids), columns) array: one ``take`` from a weight
    whose whole matrix is resident as one array (in memory, or kept by the pool), else
    gathered by storage page by page."""
    matrix = weight.resident_matrix(ids)
    if matrix is not None:
        return np.take(matrix, ids, axis=0)
    return weight.take_rows(ids)


def gather_mean(
    weight: StoredWeight, indices: np.ndarray, *, axes: tuple[int, ...], keepdims: int
) -> np.ndarray:
    """ReduceMean(W[indices], axes) over index axes other than the first: an embedding bag.

    The rows are gathered with the summed axes first, so the bags are summed one whole slab
    (one token position of every bag) at a time, in the order of the summed positions whatever
    the batch or budget, as numpy's mean over those axes of the gathered rows sums.
    """
    ndim = indices.ndim + len(weight.shape) - 1
    axes = tuple(sorted(a % ndim for a in axes))
    if (
        indices.size == 0
        or axes[0] == 0
        or axes[-1] >= indices.ndim
        or weight.dtype not in (np.float32, np.float64)
    ):
        return _mean(gather_rows(weight, indices), axes, keepdims)
    ids = _row_ids(weight, indices).reshape(indices.shape)
    summed = prod(indices.shape[a] for a in axes)
    by_position = np.moveaxis(ids, axes, range(len(axes))).reshape(summed, -1)
    matrix = weight.resident_matrix(by_position)
    if matrix is not None:
        total = _bag_sums(matrix, by_position)
    else:
        rows = weight.take_rows(by_position.reshape(-1))
        rows = rows.reshape(summed, -1, weight.layout.matrix_shape[1])
        total = rows[0].copy()
        for position in rows[1:]:
            total += position
    total /= total.dtype.type(summed)
    kept = [1 if a in axes else size for a, size in enumerate(indices.shape)]
    shape = kept if keepdims else [s for a, s in enumerate(indices.shape) if a not in axes]
    return total.reshape(*shape, *weight.shape[1:])


def _bag_sums(matrix: np.ndarray, by_position: np.ndarray) -> np.ndarray:
    """For every bag (column of ``by_position``), the sum of its rows of ``matrix`` in the
    order of the positions, as the slab sums above add them (the same bits), without writing
    out every token's row: one position of a share of the bags at a time, the shares taken by
    the engine's workers."""
    positions, bags = by_position.shape
    total = np.empty((bags, matrix.shape[1]), matrix.dtype)

    def share(span: tuple[int, int]) -> None:
        # The ids are checked (``_row_ids``): with the default mode="raise" numpy would also
        # write each take to a scratch array before ``out`` (0.8 ms of 1.8 ms per 8,192 rows).
        a, b = span
        np.take(matrix, by_position[0, a:b], axis=0, out=total[a:b], mode="clip")
        row = np.empty_like(total[a:b])
        for position in range(1, positions):
            np.take(matrix, by_position[position, a:b], axis=0, out=row, mode="clip")
            total[a:b] += row

    parallel = threads.worth_gathering(by_position.size * matrix.shape[1])
    threads.run_all(share, threads.shares(bags, parallel), parallel)
    return total


def _mean(x: np.ndarray, axes: tuple[int, ...], keepdims: int) -> np.ndarray:
    """ReduceMean as the ReduceMean kernel computes it."""
    return np.mean(x, axis=axes, keepdims=bool(keepdims)).astype(x.dtype, copy=False)


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
    def operand(first: int, end: int) -> np.ndarray:
        return kernel_operand(weight, first, end, x.dtype)

    return convolve(x, bias, weight.shape, operand, **attributes)


def kernel_operand(weight: StoredWeight, first: int, end: int, dtype: np.dtype) -> np.ndarray:
    """W[first:end].T for W viewed as a matrix (N, K), copied out of its block-row panels.

    A convolution multiplies many rows (every output position) by a small kernel: one product
    over all the channels it asks for beats one per panel (measured 4x at 16-channel panels),
    and the copy is small next to the rows. A panel is one pin; the rows of block rows that
    come as no panel are taken by storage, one pin per page.
    """
    block = weight.layout.block_rows
    spans = {span[0] // block: span for span in _spans(first, end, block)}
    out = np.empty((weight.layout.matrix_shape[1], end - first), dtype)
    scattered = []
    for group in weight.panel_groups("rows", list(spans)):
        with weight.panels("rows", group) as runs:
            for index, run in zip(group, runs, strict=True):
                start, stop = spans[index]
                if run is None:
                    scattered.append(index)
                    continue
                offset = start - index * block
                out[:, start - first : stop - first] = run[:, offset : offset + stop - start]
    if scattered:  # block rows not handed over as panels: their rows, taken in one pass
        rows = np.concatenate([np.arange(*spans[index]) for index in scattered])
        out[:, rows - first] = weight.take_rows(rows).T
    return out


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
