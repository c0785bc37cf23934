"""Reductions, arg-reductions and softmax.

Reduce ops take their axes as an attribute before opset 18 (13 for ReduceSum) and as an input
since; the kernels accept both so one registration serves every opset torch exports.
"""

from functools import partial

import numpy as np

from weightdb.engine.ops import op, register


def _reduce(
    func,
    x: np.ndarray,
    axes_input: np.ndarray | None = None,
    *,
    axes: list[int] | None = None,
    keepdims: int = 1,
    noop_with_empty_axes: int = 0,
) -> np.ndarray:
    chosen = axes_input if axes_input is not None else axes
    if chosen is None or len(chosen) == 0:
        if noop_with_empty_axes:
            return x
        chosen = range(x.ndim)
    result = func(x, axis=tuple(int(a) for a in chosen), keepdims=bool(keepdims))
    return np.asarray(result).astype(x.dtype, copy=False)


def _sum_square(x: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    return np.sum(np.square(x), axis=axis, keepdims=keepdims)


def _l2(x: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    return np.sqrt(_sum_square(x, axis, keepdims))


_REDUCERS = {
    "ReduceMean": np.mean,
    "ReduceSum": np.sum,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
    "ReduceSumSquare": _sum_square,
    "ReduceL2": _l2,
}
for _name, _func in _REDUCERS.items():
    register(_name, partial(_reduce, _func))


def _arg(func, x: np.ndarray, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0):
    if select_last_index:  # first index of the reversed axis is the last index of the original
        flipped = func(np.flip(x, axis), axis=axis, keepdims=bool(keepdims))
        return (x.shape[axis] - 1 - flipped).astype(np.int64)
    return func(x, axis=axis, keepdims=bool(keepdims)).astype(np.int64)


register("ArgMax", partial(_arg, np.argmax), since=11)
register("ArgMin", partial(_arg, np.argmin), since=11)


def _max_keepdims(x: np.ndarray, axis: int) -> np.ndarray:
    """x.max(axis, keepdims=True).

    Over the last axis of a C-contiguous x, as maximum.reduceat on the flat array: numpy's reduce
    sets up every row separately, which for short rows (attention scores: 32 per row) costs two
    to three times the work. Max is exact, so the result is the same either way.
    """
    if axis in (-1, x.ndim - 1) and x.ndim and x.flags.c_contiguous and x.size:
        flat = x.reshape(-1)
        starts = np.arange(0, flat.size, x.shape[-1])
        return np.maximum.reduceat(flat, starts).reshape(*x.shape[:-1], 1)
    return np.maximum.reduce(x, axis=axis, keepdims=True)


@op("Softmax", since=13)
def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    out = np.subtract(x, _max_keepdims(x, axis))
    np.exp(out, out=out)
    out /= np.add.reduce(out, axis=axis, keepdims=True)
    return out


@op("LogSoftmax", since=13)
def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    out = np.subtract(x, _max_keepdims(x, axis))
    out -= np.log(np.add.reduce(np.exp(out), axis=axis, keepdims=True))
    return out
