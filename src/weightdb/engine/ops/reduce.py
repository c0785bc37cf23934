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


@op("Softmax", since=13)
def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    out = x - x.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@op("LogSoftmax", since=13)
def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    out = x - x.max(axis=axis, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=axis, keepdims=True))
    return out
