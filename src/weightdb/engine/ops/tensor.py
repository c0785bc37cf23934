"""Ops that move, select or create data without arithmetic: shapes, views, indexing, constants.

Shape tensors are int64, as in ONNX. Reshape/Transpose/Slice return numpy views where they can;
the executor never writes into an op's inputs, so views are safe.
"""

import numpy as np

from weightdb.engine.ops import op


def _ints(values: np.ndarray | list[int]) -> list[int]:
    """A shape or axes tensor as Python ints (``tolist``: a tenth of the cost of int() per item,
    which matters for the dozens of small shape ops an exported transformer runs per call)."""
    return np.asarray(values).reshape(-1).tolist()


def _axes(values: np.ndarray | list[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(_ints(values))


@op("Constant")
def constant(
    *,
    value: np.ndarray | None = None,
    value_float: float | None = None,
    value_floats: list[float] | None = None,
    value_int: int | None = None,
    value_ints: list[int] | None = None,
) -> np.ndarray:
    if value is not None:
        return value
    if value_float is not None:
        return np.array(value_float, np.float32)
    if value_floats is not None:
        return np.array(value_floats, np.float32)
    if value_int is not None:
        return np.array(value_int, np.int64)
    return np.array(value_ints, np.int64)


@op("ConstantOfShape", since=9)
def constant_of_shape(shape: np.ndarray, *, value: np.ndarray | None = None) -> np.ndarray:
    fill = np.zeros(1, np.float32) if value is None else value
    return np.full(tuple(shape.tolist()), fill.reshape(-1)[0], dtype=fill.dtype)


@op("Shape", since=1)
def shape(x: np.ndarray, *, start: int = 0, end: int | None = None) -> np.ndarray:
    return np.array(x.shape[start:end], np.int64)


@op("Size")
def size(x: np.ndarray) -> np.ndarray:
    return np.array(x.size, np.int64)


@op("Reshape", since=5)
def reshape(x: np.ndarray, target: np.ndarray, *, allowzero: int = 0) -> np.ndarray:
    dims = _ints(target)
    if not allowzero:  # 0 copies the input's dimension
        dims = [x.shape[k] if d == 0 else d for k, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten", since=1)
def flatten(x: np.ndarray, *, axis: int = 1) -> np.ndarray:
    axis = axis + x.ndim if axis < 0 else axis  # axis == ndim is valid: (prod(shape), 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@op("Transpose")
def transpose(x: np.ndarray, *, perm: list[int] | None = None) -> np.ndarray:
    return np.transpose(x, perm)


@op("Squeeze")
def squeeze(x: np.ndarray, axes_input: np.ndarray | None = None, *, axes=None) -> np.ndarray:
    chosen = _axes(axes_input if axes_input is not None else axes)
    return np.squeeze(x, axis=chosen)


@op("Unsqueeze")
def unsqueeze(x: np.ndarray, axes_input: np.ndarray | None = None, *, axes=None) -> np.ndarray:
    chosen = _axes(axes_input if axes_input is not None else axes)
    return np.expand_dims(x, chosen)


@op("Concat", since=4)
def concat(*arrays: np.ndarray, axis: int) -> np.ndarray:
    return np.concatenate(arrays, axis=axis)


@op("Split", since=13)
def split(
    x: np.ndarray, sizes: np.ndarray | None = None, *, axis: int = 0, num_outputs: int = 0
) -> tuple[np.ndarray, ...]:
    if sizes is None:  # equal parts, the last one smaller (opset 18 num_outputs semantics)
        parts = num_outputs or 2
        step = -(-x.shape[axis] // parts)
        return tuple(np.split(x, range(step, x.shape[axis], step), axis=axis))
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@op("Slice", since=10)
def slice_(
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        # Python slices clamp out-of-range bounds as ONNX does (INT64_MAX means "to the end").
        index[int(axis)] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


@op("Gather", since=1)
def gather(data: np.ndarray, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    return np.take(data, indices, axis=axis, mode="raise")


@op("GatherElements", since=11)
def gather_elements(data: np.ndarray, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take_along_axis(data, indices, axis=axis)


@op("Expand", since=8)
def expand(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    # ONNX Expand broadcasts both ways: a 1 in ``target`` keeps the input's dimension.
    result = np.broadcast_shapes(x.shape, tuple(_ints(target)))
    return np.broadcast_to(x, result)


@op("Tile", since=6)
def tile(x: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    return np.tile(x, tuple(_ints(repeats)))


@op("Range", since=11)
def range_(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return np.arange(start, limit, delta, dtype=start.dtype)


@op("Pad", since=11)
def pad(
    x: np.ndarray,
    pads: np.ndarray,
    value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    *,
    mode: str = "constant",
) -> np.ndarray:
    axes = range(x.ndim) if axes is None else [int(a) % x.ndim for a in axes]
    widths = [(0, 0)] * x.ndim
    count = len(pads) // 2
    for k, axis in enumerate(axes):
        widths[axis] = (int(pads[k]), int(pads[k + count]))
    if mode == "constant":
        fill = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        return np.pad(x, widths, mode="constant", constant_values=fill)
    return np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@op("Dropout", since=12)
def dropout(x: np.ndarray, ratio=None, training_mode=None, *, seed: int = 0):
    """Inference: the identity, with an all-true mask for graphs that ask for it."""
    return x, np.ones(x.shape, bool)
