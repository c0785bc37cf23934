"""Whether a graph's rows are independent along the batch axis, decided from the graph alone.

The server stacks concurrent requests for one model along the first axis and hands each its
rows back. That is only safe when every output row depends on the same input row alone: a
mean over the batch, BatchNorm in training mode or a reshape that folds the batch would mix
one client's rows into another's answer. ``row_independence`` walks the graph once and tracks,
for every value, where the batch axis is. Each op must be on a whitelist whose rule proves it
row-wise for that axis and those attributes; anything unknown is judged not row-independent.

A value is one of these kinds:

- constant: the same whether a request runs alone or stacked with others (weights, and values
  computed from weights and from input dimensions other than the batch);
- batch-sized: a small integer tensor (a shape) holding the batch size, known symbolically;
- rows: computed from the inputs' data, with the batch axis at one known position;
- stacking-dependent: row positions n * stride (+ j under stride) built from Range(batch
  size), and rows folded into one axis; they become rows again only when a gather or reshape
  provably hands row n its own block (how exported encoders build their attention masks).

Dimensions other than the batch are equal for every request of a stacked batch (the server
only stacks requests whose inputs agree on them, and the engine checks that inputs agree on
named dims), so an unknown one is still a constant, and a named one one size wherever it is.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


class _BatchSize:
    """The batch size: at least 1, and no arithmetic on it (a fold that tries one ends)."""

    def __repr__(self) -> str:
        return "batch"


BATCH = _BatchSize()
"""Marks the batch dimension in dims, and the batch size in a shape tensor's data."""


@dataclass(frozen=True)
class _Symbol:
    """A named input dimension other than the batch: unknown, but one size wherever it
    appears, and equal for every request of a stacked batch. No arithmetic, as BATCH."""

    name: str


_KEPT_DATA = 64  # constants up to this many elements keep their values (shapes, axes)
_INTEGERS = {
    onnx.TensorProto.BOOL,
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
}


@dataclass(frozen=True)
class RowIndependence:
    """The verdict: ``independent`` when requests may be stacked, and why (or why not)."""

    independent: bool
    reason: str

    def __str__(self) -> str:
        return ("row-independent: " if self.independent else "not row-independent: ") + (
            self.reason
        )


class _Mixes(Exception):
    """The graph is not provably row-independent; the message says where."""


@dataclass(frozen=True)
class _Value:
    dims: tuple | None  # ints, symbols, None (unknown, but the same for every request), BATCH
    data: np.ndarray | None = None  # an object array of ints, symbols and BATCH, when known
    rows: bool = False  # computed from the inputs' data (then BATCH is in dims)
    below: object = None  # a size every value is under (a constant from Range(0, size))
    position: tuple | None = None  # (stride, plus): holds row n's n * stride (+ under stride)
    block: object = None  # rows folded into axis 0, each a block of this many entries

    @property
    def batch_sized(self) -> bool:
        return self.data is not None and any(v is BATCH for v in self.data.flat)

    @property
    def stacking_dependent(self) -> bool:
        """Its values depend on where the request sits in a stacked batch."""
        return self.position is not None or self.block is not None

    @property
    def axis(self) -> int:
        if self.dims is None or BATCH not in self.dims:
            raise _Mixes("an operand that should hold the rows does not")
        return self.dims.index(BATCH)

    @property
    def known_dims(self) -> tuple:
        if self.dims is None:
            raise _Mixes("a value of unknown rank meets the batch")
        return self.dims

    @property
    def rank(self) -> int:
        return len(self.known_dims)


_ABSENT = _Value(None)
"""An optional input left out."""


def row_independence(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None
) -> RowIndependence:
    """Whether every output row depends on the same row of the inputs alone, so that requests
    stacked along the first axis get the answers they would get alone.

    ``shapes`` gives the shapes of initializers stored outside the graph (name -> shape).
    """
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    values: dict[str, _Value] = {"": _ABSENT}
    for name, shape in (shapes or {}).items():
        values[name] = _Value(tuple(shape))
    for tensor in graph.initializer:
        values[tensor.name] = _constant(tensor)
    inputs = [v for v in graph.input if v.name not in values]
    if not inputs:
        return RowIndependence(False, "the graph has no inputs to stack")
    shapes = {value.name: [_input_dim(d) for d in _dims(value)] for value in inputs}
    batch_names = {dims[0] for dims in shapes.values() if dims} - {None}
    for name, dims in shapes.items():
        if not dims or isinstance(dims[0], int):
            return RowIndependence(
                False, f"input {name!r} has no free first dimension to stack requests on"
            )
        if batch_names.intersection(dims[1:]):
            return RowIndependence(False, f"input {name!r} names another axis like the batch")
        values[name] = _Value((BATCH, *dims[1:]), rows=True)
    try:
        for node in graph.node:
            results = _step(node, [values.get(name) for name in node.input], opset)
            values.update(zip(node.output, results, strict=False))
        for output in graph.output:
            value = values.get(output.name)
            if value is None or not value.rows:
                raise _Mixes(f"output {output.name!r} does not carry the batch dimension")
            if value.axis != 0:
                raise _Mixes(f"output {output.name!r} holds the batch on axis {value.axis}, not 0")
    except _Mixes as problem:
        return RowIndependence(False, str(problem))
    return RowIndependence(True, "every op is row-wise along the batch axis")


def _dims(value: onnx.ValueInfoProto) -> Sequence[onnx.TensorShapeProto.Dimension]:
    return value.type.tensor_type.shape.dim


def _input_dim(dim: onnx.TensorShapeProto.Dimension) -> int | _Symbol | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return _Symbol(dim.dim_param) if dim.dim_param else None


def _constant(tensor: onnx.TensorProto) -> _Value:
    """Its dims, and its values when small integers stored in the graph: external data is
    never read (the analysis opens no file)."""
    dims = tuple(tensor.dims)
    small = math.prod(dims) <= _KEPT_DATA and tensor.data_type in _INTEGERS
    if not small or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return _Value(dims)
    return _Value(dims, numpy_helper.to_array(tensor).astype(object))


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _step(node: onnx.NodeProto, inputs: list[_Value | None], opset: int) -> list[_Value]:
    """The values ``node`` produces, or ``_Mixes`` when it cannot be shown row-wise."""
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    if any(v is None for v in inputs):
        missing = [n for n, v in zip(node.input, inputs, strict=True) if v is None]
        raise _Mixes(f"{where} reads {missing[0]!r}, which nothing computes")
    if node.domain not in ("", "ai.onnx") or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):  # unknown semantics, or a subgraph that may read any value of the graph
        raise _Mixes(f"{where}: {node.op_type} is not known to be row-wise")
    attrs = _attributes(node)
    if node.op_type == "Constant":
        return [_constant(attrs["value"])] if "value" in attrs else []
    folded = _fold(node.op_type, inputs, attrs)
    if folded is not None:
        return [folded]
    if any(v.stacking_dependent for v in inputs) or _range_over_batch(node.op_type, inputs):
        rule = _POSITIONAL.get(node.op_type)
        if rule is None:
            raise _Mixes(f"{where} computes with where a request sits in the batch")
        return [_applied(where, rule, inputs, attrs)] * len(node.output)
    if not any(v.rows or v.batch_sized for v in inputs):
        return [_constant_result(node.op_type, inputs, attrs)] * len(node.output)
    shape_input = _SHAPE_INPUT.get(node.op_type)
    if any(v.batch_sized for i, v in enumerate(inputs) if i != shape_input):
        raise _Mixes(f"{where} computes with the batch size")
    rule = _RULES.get(node.op_type)
    if rule is None:
        raise _Mixes(f"{where}: {node.op_type} is not known to be row-wise")
    out = _applied(where, rule, inputs, attrs, opset)
    used = [name for name in node.output[1:] if name]
    if isinstance(out, _Value):
        if used and node.op_type not in _SAME_FOR_ALL_OUTPUTS:
            raise _Mixes(f"{where}: its extra output {used[0]!r} is not known to be row-wise")
        return [out] * len(node.output)
    return out


def _applied(where: str, rule: Callable, *arguments) -> _Value | list[_Value]:
    try:
        return rule(*arguments)
    except _Mixes as problem:
        raise _Mixes(f"{where}: {problem}") from None
    except (IndexError, KeyError, TypeError, ValueError) as error:  # attributes it cannot read
        raise _Mixes(f"{where}: cannot follow its inputs or attributes ({error})") from None


def _rows(dims: Sequence) -> _Value:
    if list(dims).count(BATCH) != 1:
        raise _Mixes("the batch axis is not carried through")
    return _Value(tuple(dims), rows=True)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(value: _Value, what: str) -> list:
    if value.data is None or value.batch_sized:
        raise _Mixes(f"its {what} are not constant")
    return [int(v) for v in value.data.flat]


def _const(value: _Value, what: str) -> _Value:
    if value.rows or value.batch_sized:
        raise _Mixes(f"its {what} depends on the request")
    return value


# Row-wise rules: each takes the node's inputs (at least one holds rows), its attributes and
# the opset, and returns the output (for every output) or raises _Mixes.


def _broadcast(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """Elementwise with numpy broadcasting: every operand aligned on the batch axis, and a
    constant operand of size 1 (or absent) along it."""
    return _rows(_broadcast_dims([v.known_dims for v in inputs if v is not _ABSENT]))


def _broadcast_dims(shapes: list[tuple]) -> list:
    """numpy's broadcast of ``shapes`` (ints, symbols, None, BATCH). Only a size 1 meets the
    batch, and a dimension is known only when every operand agrees on it."""
    rank = max(len(dims) for dims in shapes)
    result = []
    for position in range(rank):
        sizes = {
            dims[position - rank + len(dims)] for dims in shapes if position >= rank - len(dims)
        }
        sizes.discard(1)
        if BATCH in sizes and len(sizes) > 1:
            raise _Mixes("an operand is not size 1 along the batch axis")
        known = {size for size in sizes if isinstance(size, int)}
        if len(known) > 1:
            raise _Mixes(f"its operands' sizes {sorted(known)} do not broadcast")
        if known:
            result.append(known.pop())
        elif len(sizes) == 1 and None not in sizes:
            result.append(sizes.pop())
        else:
            result.append(1 if not sizes else None)
    return result


def _first_operand(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """Elementwise on the first input; the others (ratios, bounds, a type) are constants."""
    for other in inputs[1:]:
        _const(other, "operand")
    return _broadcast(inputs[:1], attrs, opset)


def _dropout(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    if len(inputs) > 2 and inputs[2] is not _ABSENT and _ints(inputs[2], "training mode") != [0]:
        raise _Mixes("training mode is on")
    return _first_operand(inputs, attrs, opset)


def _matmul(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """Row-wise when the batch is A's row axis, B's column axis, or a stacking axis both
    share (a constant operand being size 1 there)."""
    a, b = inputs
    if a.rank < 2 or b.rank < 2:
        raise _Mixes("a 1-D operand is contracted whole")
    rank = max(a.rank, b.rank)
    positions = set()
    matrix_axes = ((a, a.rank - 2, a.rank - 1, rank - 2), (b, b.rank - 1, b.rank - 2, rank - 1))
    for value, kept, contracted, out in matrix_axes:
        if not value.rows:
            continue
        if value.axis == contracted:
            raise _Mixes("it contracts the batch axis")
        positions.add(out if value.axis == kept else value.axis + rank - value.rank)
    if len(positions) != 1:
        raise _Mixes("its operands hold the batch on different axes")
    (axis,) = positions
    for value in (a, b):
        inner = axis - (rank - value.rank)
        if not value.rows and axis < rank - 2 and inner >= 0 and value.dims[inner] != 1:
            raise _Mixes("a constant operand is not size 1 along the batch axis")
    return _rows([BATCH if i == axis else None for i in range(rank)])


def _gemm(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    a, b, *c = inputs
    _const(b, "weight")
    if not a.rows or a.rank != 2 or a.axis != attrs.get("transA", 0):
        raise _Mixes("the batch is not A's row axis")
    if c and c[0] is not _ABSENT:
        bias = _const(c[0], "bias")
        if bias.dims is None or (len(bias.dims) == 2 and bias.dims[0] != 1):
            raise _Mixes("its bias is not a row vector")
    return _rows((BATCH, None))


def _batch_first(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """Ops over N x C x ... tensors that treat each sample alone (convolution, pooling,
    BatchNorm with stored statistics)."""
    x = inputs[0]
    for other in inputs[1:]:
        _const(other, "weight")
    if not x.rows or x.axis != 0:
        raise _Mixes("the batch is not the first axis")
    if attrs.get("training_mode", 0):
        raise _Mixes("training mode normalises over the batch")
    return _rows((BATCH, *[None] * (x.rank - 1)))


def _normalized_from(axis_attr: str, default: int) -> Callable:
    """Ops over the axes from ``axis`` on (LayerNormalization, pre-13 Softmax)."""

    def rule(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
        x = inputs[0]
        for other in inputs[1:]:
            _const(other, "scale")
        if x.axis >= _axis(attrs.get(axis_attr, default), x.rank):
            raise _Mixes("it normalises over the batch axis")
        return _rows(x.dims)

    return rule


def _softmax(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    if opset < 13:
        return _normalized_from("axis", 1)(inputs, attrs, opset)
    x = inputs[0]
    if _axis(attrs.get("axis", -1), x.rank) == x.axis:
        raise _Mixes("it normalises over the batch axis")
    return _rows(x.dims)


def _reduced(x: _Value, axes: list[int], keepdims: int) -> _Value:
    axes = sorted(_axis(a, x.rank) for a in axes)
    if x.axis in axes:
        raise _Mixes("it reduces over the batch axis")
    if keepdims:
        return _rows([1 if i in axes else d for i, d in enumerate(x.dims)])
    return _rows([d for i, d in enumerate(x.dims) if i not in axes])


def _reduce(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    x = inputs[0]
    given = len(inputs) > 1 and inputs[1] is not _ABSENT
    axes = _ints(inputs[1], "axes") if given else list(attrs.get("axes", []))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return _rows(x.dims)
        raise _Mixes("it reduces over every axis, the batch too")
    return _reduced(x, axes, attrs.get("keepdims", 1))


def _arg(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    return _reduced(inputs[0], [attrs.get("axis", 0)], attrs.get("keepdims", 1))


def _reshape(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """Row-wise when each input row becomes one output row: the output's batch axis has as many
    elements before it as the input's (then after it too, the totals being equal); where the
    -1 stands in for the batch size, both sides must match, or -1 would absorb other dims."""
    x, shape = inputs
    if shape.data is None:
        raise _Mixes("its target shape is not known")
    if not x.rows:
        raise _Mixes("it reshapes the batch size")
    target = list(shape.data.flat)
    if target == [-1] and x.axis == 0:
        return _folded(x.dims[1:], (None,))
    for i, d in enumerate(target):
        if isinstance(d, int) and d == 0:
            if attrs.get("allowzero", 0):
                raise _Mixes("a zero in its target shape")
            target[i] = x.dims[i]
    given = BATCH in target
    if not given and -1 not in target:
        raise _Mixes("it folds the batch dimension")
    axis = target.index(BATCH if given else -1)
    target[axis] = BATCH
    before = _product(x.dims[: x.axis]), _product(target[:axis])
    after = _product(x.dims[x.axis + 1 :]), _product(target[axis + 1 :])
    matches = [None not in pair and pair[0] == pair[1] for pair in (before, after)]
    if not (any(matches) if given else all(matches)):
        raise _Mixes("it folds the batch dimension")
    return _rows([d if (isinstance(d, int) and d >= 0) or d is BATCH else None for d in target])


def _product(dims: Sequence) -> int | None:
    if any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return math.prod(dims)


def _flatten(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    x = inputs[0]
    axis = _axis(attrs.get("axis", 1), x.rank)
    if x.axis == 0 and axis > 1:
        return _folded(x.dims[1:axis], (None, _size_product(x.dims[axis:])))
    if x.axis >= axis or _product([d for d in x.dims[:axis] if d is not BATCH]) != 1:
        raise _Mixes("it folds the batch dimension")
    return _rows((BATCH, _size_product(x.dims[axis:])))


def _transpose(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    x = inputs[0]
    perm = attrs.get("perm", list(range(x.rank))[::-1])
    return _rows([x.dims[p] for p in perm])


def _axes_of(inputs: list[_Value], attrs: dict) -> list[int] | None:
    if len(inputs) > 1:
        return _ints(inputs[1], "axes")
    return list(attrs["axes"]) if "axes" in attrs else None


def _squeeze(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    x = inputs[0]
    axes = _axes_of(inputs, attrs)
    if axes is None:
        raise _Mixes("without axes it would drop a batch of one")
    axes = [_axis(a, x.rank) for a in axes]
    if x.axis in axes:
        raise _Mixes("it squeezes the batch axis")
    return _rows([d for i, d in enumerate(x.dims) if i not in axes])


def _unsqueeze(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    x = inputs[0]
    return _rows(_unsqueezed(list(x.dims), _axes_of(inputs, attrs) or []))


def _unsqueezed(dims: list, axes: list[int]) -> list:
    rank = len(dims) + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        dims.insert(axis, 1)
    return dims


def _concat(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    if not all(v.rows for v in inputs):
        raise _Mixes("it joins rows with a constant, which has no batch")
    first = inputs[0]
    if {v.axis for v in inputs} != {first.axis} or _axis(attrs["axis"], first.rank) == first.axis:
        raise _Mixes("it concatenates along the batch axis")
    return _rows([BATCH if d is BATCH else None for d in first.dims])


def _split(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    x = inputs[0]
    for other in inputs[1:]:
        _const(other, "split sizes")
    axis = _axis(attrs.get("axis", 0), x.rank)
    if axis == x.axis:
        raise _Mixes("it splits the batch axis")
    return _rows([None if i == axis else d for i, d in enumerate(x.dims)])


def _slice(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """Row-wise unless it cuts the batch axis (slicing all of it, 0 to the end, is allowed)."""
    x, starts, ends, *rest = [*inputs, _ABSENT, _ABSENT][:5]
    starts, ends = _ints(starts, "starts"), _ints(ends, "ends")
    axes = list(range(len(starts))) if rest[0] is _ABSENT else _ints(rest[0], "axes")
    steps = [1] * len(starts) if rest[1] is _ABSENT else _ints(rest[1], "steps")
    dims = list(x.dims)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = _axis(axis, x.rank)
        if axis != x.axis:
            dims[axis] = None
        elif (start, step) != (0, 1) or end < 2**31 - 1:
            raise _Mixes("it slices the batch axis")
    return _rows(dims)


def _gather(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    data, indices = inputs
    axis = _axis(attrs.get("axis", 0), data.rank)
    if data.rows and indices.rows:
        raise _Mixes("both its data and its indices hold rows")
    if data.rows and axis == data.axis:
        raise _Mixes("it gathers along the batch axis")
    if indices.dims is None:
        raise _Mixes("its indices have unknown rank")
    return _rows([*data.dims[:axis], *indices.dims, *data.dims[axis + 1 :]])


def _gather_elements(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    data, indices = inputs
    if not (data.rows and indices.rows) or data.axis != indices.axis:
        raise _Mixes("its data and indices do not share the batch axis")
    if _axis(attrs.get("axis", 0), data.rank) == data.axis:
        raise _Mixes("it gathers along the batch axis")
    return _rows(indices.dims)


def _along_other_axes(what: str) -> Callable:
    """Expand, Tile and Pad: row-wise when their constant parameter leaves the batch axis be
    (Expand to 1, Tile 1 time, Pad by 0)."""

    def rule(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
        x = inputs[0]
        if what == "expand shape":
            shape = inputs[1]
            if shape.batch_sized:  # a constant expanded to the batch is the same in every row
                return _broadcast([x, _rows(list(shape.data.flat))], attrs, opset)
            return _broadcast([x, _Value(tuple(_ints(shape, what)))], attrs, opset)
        values = _ints(inputs[1], what)
        if what == "repeats":
            if values[x.axis] != 1:
                raise _Mixes("it repeats along the batch axis")
            return _rows([d if i == x.axis else None for i, d in enumerate(x.dims)])
        axes = _ints(inputs[3], "axes") if len(inputs) > 3 else list(range(x.rank))
        axes = [_axis(a, x.rank) for a in axes]
        half = len(values) // 2
        for i, axis in enumerate(axes):
            if axis == x.axis and (values[i], values[i + half]) != (0, 0):
                raise _Mixes("it pads the batch axis")
        return _rows([d if i == x.axis else None for i, d in enumerate(x.dims)])

    return rule


def _constant_of_shape(inputs: list[_Value], attrs: dict, opset: int) -> _Value:
    """The same value in every row: row-wise whenever the batch size is one of its dims."""
    if inputs[0].data is None:
        raise _Mixes("its shape is computed from the inputs' data")
    return _rows(list(inputs[0].data.flat))


# Shape arithmetic on small known integer tensors, which may hold the batch size. The result
# is one more known tensor; None when this fold cannot follow the values.


def _fold(op_type: str, inputs: list[_Value], attrs: dict) -> _Value | None:
    if op_type == "Shape" and inputs[0].dims is not None and inputs[0].block is None:
        data = np.array(inputs[0].dims[attrs.get("start", 0) : attrs.get("end")], dtype=object)
        return _Value(data.shape, data)
    fold = _FOLDS.get(op_type)
    if fold is None or not all(v.data is not None for v in inputs if v is not _ABSENT):
        return None
    arrays = [v.data for v in inputs]
    try:
        data = np.asarray(fold(arrays, attrs), dtype=object)
    except (IndexError, ValueError, TypeError):
        return None
    if data.size > _KEPT_DATA:
        return None
    return _Value(data.shape, data)


def _fold_equal(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    """Sizes, known or not, are never negative: equal to -1 is false (how exports test for a
    -1 in a shape); any other comparison with an unknown size ends the fold."""

    def equal(a: object, b: object) -> bool:
        if all(isinstance(v, int) for v in (a, b)):
            return a == b
        if any(isinstance(v, int) and v < 0 for v in (a, b)):
            return False
        raise TypeError("an unknown size")

    return np.frompyfunc(equal, 2, 1)(*arrays)


def _fold_constant_of_shape(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1)
    return np.full([int(d) for d in arrays[0].flat], value.flat[0], dtype=object)


def _fold_reshape(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    data, shape = arrays
    target = [int(d) for d in shape.flat]  # a TypeError for an unknown size ends the fold
    target = [
        data.shape[i] if d == 0 and not attrs.get("allowzero") else d for i, d in enumerate(target)
    ]
    return data.reshape(target)


def _fold_unsqueeze(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    axes = [int(a) for a in arrays[1].flat] if len(arrays) > 1 else attrs["axes"]
    return arrays[0].reshape(_unsqueezed(list(arrays[0].shape), axes))


def _fold_squeeze(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    axes = [int(a) for a in arrays[1].flat] if len(arrays) > 1 else attrs.get("axes")
    return np.squeeze(arrays[0], axis=None if axes is None else tuple(axes))


def _fold_slice(arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    data, starts, ends, *rest = arrays
    if data.ndim != 1 or (rest and [int(a) for a in rest[0].flat] not in ([0], [-1])):
        raise ValueError("only 1-D slices are folded")
    step = int(rest[1].flat[0]) if len(rest) > 1 else 1
    return data[int(starts.flat[0]) : int(ends.flat[0]) : step]


def _known(array: np.ndarray) -> np.ndarray:
    if not all(isinstance(v, int) for v in array.flat):
        raise TypeError("an unknown size")
    return array


_FOLDS: dict[str, Callable[[list[np.ndarray], dict], np.ndarray]] = {
    "Identity": lambda arrays, attrs: arrays[0],
    "Cast": lambda arrays, attrs: arrays[0],
    "Gather": lambda arrays, attrs: np.take(
        arrays[0], arrays[1].astype(np.int64), axis=attrs.get("axis", 0)
    ),
    "Concat": lambda arrays, attrs: np.concatenate(arrays, axis=attrs["axis"]),
    "Reshape": _fold_reshape,
    "Equal": _fold_equal,
    "Where": lambda arrays, attrs: np.where(_known(arrays[0]).astype(bool), *arrays[1:]),
    "Mul": lambda arrays, attrs: np.multiply(*arrays),
    "Add": lambda arrays, attrs: np.add(*arrays),
    "ConstantOfShape": _fold_constant_of_shape,
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Slice": _fold_slice,
}
_SHAPE_INPUT = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}
"""The one input of these ops that may hold the batch size: the shape they produce."""


_ELEMENTWISE = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Mod",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "BitwiseAnd",
    "BitwiseOr",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Reciprocal",
    "Tanh",
    "Sin",
    "Cos",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Not",
    "IsNaN",
    "IsInf",
    "Identity",
    "Relu",
    "Sigmoid",
    "Erf",
    "Gelu",
    "Softplus",
    "LeakyRelu",
    "Sum",
    "Max",
    "Min",
    "Mean",
    "Where",
]
_RULES: dict[str, Callable] = {
    **dict.fromkeys(_ELEMENTWISE, _broadcast),
    **dict.fromkeys(("Cast", "CastLike", "Clip"), _first_operand),
    "Dropout": _dropout,
    "MatMul": _matmul,
    "Gemm": _gemm,
    **dict.fromkeys(
        (
            "Conv",
            "MaxPool",
            "AveragePool",
            "GlobalAveragePool",
            "GlobalMaxPool",
            "BatchNormalization",
        ),
        _batch_first,
    ),
    "LayerNormalization": _normalized_from("axis", -1),
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    **dict.fromkeys(
        (
            "ReduceMean",
            "ReduceSum",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        ),
        _reduce,
    ),
    "ArgMax": _arg,
    "ArgMin": _arg,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Expand": _along_other_axes("expand shape"),
    "Tile": _along_other_axes("repeats"),
    "Pad": _along_other_axes("pads"),
    "ConstantOfShape": _constant_of_shape,
}
_SAME_FOR_ALL_OUTPUTS = {"Dropout", "Split"}


# Where a request sits in a stacked batch. Exports that vectorise over the batch (e.g. the
# attention mask of Hugging Face encoders) fold the rows into one axis, then gather each row's
# block back with indices n * stride + j built from Range(batch size). Such indices and folded
# values depend on the stacking; they are followed only through these ops, and become rows
# again only when a gather or reshape provably takes row n's block for row n.


def _size_product(dims: Sequence) -> object:
    """The product of sizes as a size: an int, or one symbol times ones; None if unknown."""
    symbols = [d for d in dims if not isinstance(d, int)]
    ints = math.prod(d for d in dims if isinstance(d, int))
    if not symbols:
        return ints
    if len(symbols) == 1 and ints == 1 and isinstance(symbols[0], _Symbol):
        return symbols[0]
    return None


def _folded(block_dims: Sequence, dims: tuple) -> _Value:
    block = _size_product(block_dims)
    if block is None:
        raise _Mixes("it folds the batch dimension with sizes it cannot follow")
    return _Value(dims, block=block)


def _range_over_batch(op_type: str, inputs: list[_Value]) -> bool:
    return op_type == "Range" and len(inputs) == 3 and inputs[1].batch_sized


def _single(value: _Value) -> object:
    if value.data is None or value.data.size != 1 or value.stacking_dependent:
        raise _Mixes("an operand is not one known size")
    return value.data.flat[0]


def _positional_range(inputs: list[_Value], attrs: dict) -> _Value:
    start, limit, delta = (_single(v) for v in inputs)
    if (start, limit, delta) != (0, BATCH, 1):
        raise _Mixes("a range over the batch other than 0, 1, ... rows - 1")
    return _Value((BATCH,), position=(1, False))


def _positional_mul(inputs: list[_Value], attrs: dict) -> _Value:
    index, factor = inputs if inputs[0].position else inputs[::-1]
    if index.position != (1, False) or factor.stacking_dependent:
        raise _Mixes("it scales row positions other than 0, 1, ...")
    stride = _single(factor)
    if not (isinstance(stride, _Symbol) or (isinstance(stride, int) and stride >= 1)):
        raise _Mixes("it scales row positions by other than a positive size")
    dims = tuple(_broadcast_dims([index.known_dims, factor.known_dims]))
    return _Value(dims, position=(stride, False))


def _positional_add(inputs: list[_Value], attrs: dict) -> _Value:
    index, offset = inputs if inputs[0].position else inputs[::-1]
    stride, plus = index.position or (None, True)
    if plus or offset.stacking_dependent or offset.below != stride:
        raise _Mixes("it adds to row positions what may reach the next row")
    return _Value(
        tuple(_broadcast_dims([index.known_dims, offset.known_dims])), position=(stride, True)
    )


def _positional_unary(op_type: str) -> Callable:
    """Unsqueeze, and casts to integers, of row positions (which keep their values)."""

    def rule(inputs: list[_Value], attrs: dict) -> _Value:
        x = inputs[0]
        if any(v.stacking_dependent for v in inputs[1:]) or x.block is not None:
            raise _Mixes("it reshapes folded rows")
        if op_type == "Cast" and attrs.get("to") not in _WIDE_INTEGERS:
            raise _Mixes("it casts row positions to a type that may change them")
        dims = x.known_dims
        if op_type == "Unsqueeze":
            dims = tuple(_unsqueezed(list(dims), _axes_of(inputs, attrs) or []))
        return _Value(dims, position=x.position)

    return rule


def _positional_gather(inputs: list[_Value], attrs: dict) -> _Value:
    """Row n's block of folded rows, picked by indices n * block + j (j under block)."""
    data, indices = inputs
    if attrs.get("axis", 0) != 0 or data.block is None or indices.position is None:
        raise _Mixes("it gathers across folded rows")
    if indices.position[0] != data.block or data.block is None:
        raise _Mixes("its indices do not step by the folded rows' block")
    return _rows([*indices.known_dims, *data.known_dims[1:]])


def _positional_reshape(inputs: list[_Value], attrs: dict) -> _Value:
    """Folded 1-D rows back into rows of the block's size."""
    data, shape = inputs
    target = list(shape.data.flat) if shape.data is not None else []
    if data.block is None or len(data.known_dims) != 1 or target[:1] != [BATCH]:
        raise _Mixes("it reshapes folded rows into other than one row per block")
    if any(d is None or d == -1 or d == 0 for d in target[1:]):
        raise _Mixes("it unfolds rows into sizes it cannot follow")
    if _size_product(target[1:]) != data.block:
        raise _Mixes("it unfolds rows into blocks of another size")
    return _rows(target)


_POSITIONAL: dict[str, Callable[[list[_Value], dict], _Value]] = {
    "Range": _positional_range,
    "Mul": _positional_mul,
    "Add": _positional_add,
    "Unsqueeze": _positional_unary("Unsqueeze"),
    "Cast": _positional_unary("Cast"),
    "Identity": _positional_unary("Identity"),
    "Gather": _positional_gather,
    "Reshape": _positional_reshape,
}


# Constants: their dims where they can be followed (a constant meeting the batch must be known
# to be size 1 along it), and the bound of Range(0, size).


def _constant_result(op_type: str, inputs: list[_Value], attrs: dict) -> _Value:
    try:
        return _CONSTANT_RESULTS[op_type](inputs, attrs)
    except (KeyError, _Mixes, IndexError, TypeError, ValueError):
        return _Value(None)


def _constant_range(inputs: list[_Value], attrs: dict) -> _Value:
    """1-D; of ``size`` values under ``size`` for Range(0, size, 1)."""
    try:
        start, limit, delta = (_single(v) for v in inputs)
    except _Mixes:
        return _Value((None,))
    if (start, delta) != (0, 1) or limit is None:
        return _Value((None,))
    return _Value((limit,), below=limit)


def _constant_unsqueeze(inputs: list[_Value], attrs: dict) -> _Value:
    dims = _unsqueezed(list(inputs[0].known_dims), _axes_of(inputs, attrs) or [])
    return _Value(tuple(dims), below=inputs[0].below)


def _constant_slice(inputs: list[_Value], attrs: dict) -> _Value:
    dims = list(inputs[0].known_dims)
    given = len(inputs) > 3 and inputs[3] is not _ABSENT
    axes = _ints(inputs[3], "axes") if given else range(len(_ints(inputs[1], "starts")))
    for axis in axes:
        dims[_axis(axis, len(dims))] = None
    return _Value(tuple(dims))


def _constant_gather(inputs: list[_Value], attrs: dict) -> _Value:
    data, indices = (v.known_dims for v in inputs)
    axis = _axis(attrs.get("axis", 0), len(data))
    return _Value((*data[:axis], *indices, *data[axis + 1 :]))


_WIDE_INTEGERS = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
_CONSTANT_RESULTS: dict[str, Callable[[list[_Value], dict], _Value]] = {
    **dict.fromkeys(
        [op for op in _ELEMENTWISE if op != "Identity"],
        lambda inputs, attrs: _Value(tuple(_broadcast_dims([v.known_dims for v in inputs]))),
    ),
    "Identity": lambda inputs, attrs: _Value(inputs[0].known_dims, below=inputs[0].below),
    "Cast": lambda inputs, attrs: _Value(
        inputs[0].known_dims, below=inputs[0].below if attrs.get("to") in _WIDE_INTEGERS else None
    ),
    "Range": _constant_range,
    "Unsqueeze": _constant_unsqueeze,
    "Slice": _constant_slice,
    "Gather": _constant_gather,
    "GatherElements": lambda inputs, attrs: _Value(inputs[1].known_dims),
    "Expand": lambda inputs, attrs: _Value(
        tuple(_broadcast_dims([inputs[0].known_dims, tuple(inputs[1].data.flat)]))
    ),
    "ConstantOfShape": lambda inputs, attrs: _Value(tuple(inputs[0].data.flat)),
}
