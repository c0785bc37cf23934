"""Neural-network ops: MatMul, Gemm, normalizations, convolution and pooling.

Convolution is im2col followed by one matrix product per group; the kernel operand is a
parameter so the blocked Conv (weights streamed from storage) reuses everything here but the
reading of its kernel.
"""

from collections.abc import Callable, Iterator, Sequence
from functools import cache
from math import ceil, prod

import numpy as np

from weightdb.engine import gemm as tiled
from weightdb.engine.errors import UnsupportedModelError
from weightdb.engine.ops import op

# (first output channel, end output channel) -> kernel_matrix[first:end].T, in any layout
KernelOperand = Callable[[int, int], np.ndarray]

# A kernel operand is assembled for at most this many bytes of output channels at a time.
OPERAND_BYTES = 1 << 22


@op("MatMul")
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return tiled.matmul(a, b)


def gemm_epilogue(
    product: np.ndarray, c: np.ndarray | None, alpha: float, beta: float
) -> np.ndarray:
    """alpha * product + beta * c, in place on the freshly computed product."""
    if alpha != 1.0:
        product *= product.dtype.type(alpha)
    if c is not None and beta != 0.0:
        product += c if beta == 1.0 else c * c.dtype.type(beta)
    return product


@op("Gemm", since=11)
def gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    product = tiled.product(a.T if transA else a, b.T if transB else b)
    return gemm_epilogue(product, c, alpha, beta)


@op("LayerNormalization", since=17)
def layer_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    y = x - mean
    inv_std = np.square(y).mean(axis=axes, keepdims=True)
    inv_std += x.dtype.type(epsilon)
    np.sqrt(inv_std, out=inv_std)
    np.reciprocal(inv_std, out=inv_std)
    y *= inv_std
    y *= scale
    if bias is not None:
        y += bias
    return y, mean, inv_std


@op("BatchNormalization", since=9)
def batch_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    *,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: int = 0,
) -> np.ndarray:
    if training_mode:
        raise UnsupportedModelError("BatchNormalization in training mode is not supported")
    channel = (-1,) + (1,) * (x.ndim - 2)
    factor = scale / np.sqrt(var + x.dtype.type(epsilon))
    shift = bias - mean * factor
    y = x * factor.reshape(channel)
    y += shift.reshape(channel)
    return y


@cache
def _window_geometry(
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: tuple[int, ...] | None,
    auto_pad: str,
    ceil_mode: int = 0,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Padding before, padding after (ceil_mode's extra included) and output size per axis
    (computed once per geometry)."""
    n = len(sizes)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [
            max((ceil(size / s) - 1) * s + span - size, 0)
            for size, s, span in zip(sizes, strides, spans, strict=True)
        ]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID" or pads is None:
        begin, end = [0] * n, [0] * n
    else:
        begin, end = list(pads[:n]), list(pads[n:])
    outs = []
    for axis in range(n):
        room = sizes[axis] + begin[axis] + end[axis] - spans[axis]
        count = (ceil(room / strides[axis]) if ceil_mode else room // strides[axis]) + 1
        if ceil_mode and (count - 1) * strides[axis] >= sizes[axis] + begin[axis]:
            count -= 1  # the last window may not start in the padding (PyTorch and ORT agree)
        outs.append(count)
    extra_end = [
        max(end[a], (outs[a] - 1) * strides[a] + spans[a] - sizes[a] - begin[a]) for a in range(n)
    ]
    return tuple(begin), tuple(extra_end), tuple(outs)


def _tuple(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


def _taps(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    padding: tuple[Sequence[int], Sequence[int], Sequence[int]],
    fill: float,
) -> Iterator[np.ndarray]:
    """Per kernel offset, the (N, C, *out) view of the padded input that this offset reads.

    Pooling and im2col loop over the few kernel offsets with whole-array operations instead of
    reducing strided windows, which numpy does slowly.
    """
    begin, end, outs = padding
    widths = [(0, 0), (0, 0), *zip(begin, end, strict=True)]
    padded = np.pad(x, widths, constant_values=fill) if any(begin) or any(end) else x
    for offset in np.ndindex(*kernel):
        index = [
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offset, dilations, outs, strides, strict=True)
        ]
        yield padded[(slice(None), slice(None), *index)]


def _columns(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    padding: tuple[Sequence[int], Sequence[int], Sequence[int]],
) -> np.ndarray:
    """im2col: one row per output position (N, *out), columns ordered (*k, C).

    Each kernel offset copies the part of the input it reads straight into its columns, C
    values side by side (contiguous runs when the input is channels-last, as a Conv's output
    is), with no padded copy of the input: the cells it would read from the padding stay zero.
    """
    begin, end, outs = padding
    batch, channels = x.shape[:2]
    geometry = (tuple(x.shape[2:]), tuple(kernel), tuple(strides), tuple(dilations))
    copies = _column_copies(*geometry, tuple(begin), tuple(outs))
    padded = any(begin) or any(end)
    cols = (np.zeros if padded else np.empty)((batch, *outs, prod(kernel), channels), x.dtype)
    channels_last = x.transpose(0, *range(2, x.ndim), 1)
    whole = slice(None)
    for t, target, source in copies:
        cols[(whole, *target, t)] = channels_last[(whole, *source)]
    return cols.reshape(batch * prod(outs), channels * prod(kernel))


@cache
def _column_copies(
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    begin: tuple[int, ...],
    outs: tuple[int, ...],
) -> list[tuple[int, list[slice], list[slice]]]:
    """For each kernel offset that reads any input: its number, the output cells it fills and
    the input cells they read, as slices of the spatial axes (planned once per geometry, so a
    small batch pays a few numpy calls per Conv, not this arithmetic)."""
    copies = []
    for t, offset in enumerate(np.ndindex(*kernel)):
        target, source = [], []
        for o, d, s, b, size, count in zip(
            offset, dilations, strides, begin, sizes, outs, strict=True
        ):
            start = o * d - b  # the input index output 0 reads at this offset
            first = max(0, -(start // s))  # the first output whose input is not padding
            stop = min(count, (size - start + s - 1) // s)
            if first >= stop:
                break
            target.append(slice(first, stop))
            source.append(slice(start + first * s, start + (stop - 1) * s + 1, s))
        else:
            copies.append((t, target, source))
    return copies


def _taps_first(operand: np.ndarray, channels: int) -> np.ndarray:
    """A kernel operand with its rows reordered from (C, *k) to (*k, C), as ``_columns`` orders
    the columns."""
    width = operand.shape[1]
    by_channel = operand.reshape(channels, -1, width)
    return np.ascontiguousarray(by_channel.transpose(1, 0, 2)).reshape(-1, width)


def convolve(
    x: np.ndarray,
    bias: np.ndarray | None,
    weight_shape: Sequence[int],
    operand: KernelOperand,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX Conv given the kernel only through ``operand`` (and its shape).

    The result is channels-last in memory, the layout the products give, returned as an
    (N, C, *out) view: no transposing copy, and the element-wise ops and pools that usually
    follow read it as fast either way.
    """
    out_channels, group_in = weight_shape[0], weight_shape[1]
    kernel = list(kernel_shape or weight_shape[2:])
    n = len(kernel)
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    padding = _window_geometry(
        x.shape[2:], tuple(kernel), tuple(strides), tuple(dilations), _tuple(pads), auto_pad
    )
    group_out = out_channels // group
    inner = group_in * prod(kernel)
    step = max(1, OPERAND_BYTES // (inner * x.dtype.itemsize))
    y = None
    for g in range(group):
        part = x[:, g * group_in : (g + 1) * group_in]
        cols = _columns(part, kernel, strides, dilations, padding)
        for first in range(g * group_out, (g + 1) * group_out, step):
            end = min(first + step, (g + 1) * group_out)
            product = tiled.product(cols, _taps_first(operand(first, end), group_in))
            if end - first == out_channels:
                y = product
                continue
            if y is None:
                y = np.empty((cols.shape[0], out_channels), product.dtype)
            y[:, first:end] = product
    if bias is not None:
        y += bias
    y = y.reshape(x.shape[0], *padding[2], out_channels)
    return y.transpose(0, n + 1, *range(1, n + 1))


@op("Conv", since=11)
def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attributes) -> np.ndarray:
    matrix = w.reshape(w.shape[0], -1)

    def operand(first: int, end: int) -> np.ndarray:
        return matrix[first:end].T

    return convolve(x, b, w.shape, operand, **attributes)


def _pool(
    x: np.ndarray,
    reducer: str,
    *,
    kernel_shape: Sequence[int],
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    count_include_pad: int = 0,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    storage_order: int = 0,
) -> np.ndarray:
    n = len(kernel_shape)
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    padding = _window_geometry(
        x.shape[2:],
        tuple(kernel_shape),
        tuple(strides),
        tuple(dilations),
        _tuple(pads),
        auto_pad,
        ceil_mode,
    )
    geometry = (kernel_shape, strides, dilations, padding)
    if reducer == "max":
        return _accumulate(_taps(x, *geometry, fill=-np.inf), np.maximum)
    total = _accumulate(_taps(x, *geometry, fill=0.0), np.add)
    # Divide by how many real (or, with count_include_pad, explicitly padded) cells each window
    # covers; the extra cells of ceil_mode never count.
    counted = np.ones((1, 1, *x.shape[2:]), x.dtype)
    begin, end, outs = padding
    if count_include_pad and pads is not None:
        explicit = [(0, 0), (0, 0), *zip(pads[:n], pads[n:], strict=True)]
        counted = np.pad(counted, explicit, constant_values=1.0)
        begin = [b - p for b, p in zip(begin, pads[:n], strict=True)]
        end = [e - p for e, p in zip(end, pads[n:], strict=True)]
    counts = _accumulate(
        _taps(counted, kernel_shape, strides, dilations, (begin, end, outs), 0.0), np.add
    )
    total /= counts
    return total


def _accumulate(taps: Iterator[np.ndarray], ufunc: np.ufunc) -> np.ndarray:
    """ufunc over the taps in order; the result keeps the input's memory layout (a Conv's
    channels-last output stays so, no transposing copy)."""
    first = next(taps)
    second = next(taps, None)
    if second is None:
        return first.copy(order="K")
    result = ufunc(first, second)
    for tap in taps:
        ufunc(result, tap, out=result)
    return result


@op("MaxPool", since=10)
def max_pool(x: np.ndarray, **attributes) -> np.ndarray:
    return _pool(x, "max", **attributes)


@op("AveragePool", since=10)
def average_pool(x: np.ndarray, **attributes) -> np.ndarray:
    return _pool(x, "mean", **attributes)


@op("GlobalAveragePool")
def global_average_pool(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


@op("GlobalMaxPool")
def global_max_pool(x: np.ndarray) -> np.ndarray:
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
