"""Each engine op alone against onnxruntime on small inputs: broadcasting, negative axes, empty
and scalar shapes, and the attribute forms of older opsets.

A case is one ONNX node run by onnxruntime and by the kernel in ``OPS``; outputs must have the
same dtype and shape and equal values (integers and booleans exactly, floats to a few ulps,
since onnxruntime's vectorised exp/tanh/erf and summation orders differ from numpy's). Then
the kernels' own promises: erf and Gelu near the exact functions, and the same bits for an
element or a row wherever it sits in memory.
"""

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from weightdb.engine.ops import OPS

RNG = np.random.default_rng(11)


def _floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _ints(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


X = _floats(2, 3, 4)
ROW = _floats(4)
POSITIVE = np.abs(_floats(2, 3)) + np.float32(0.5)
EMPTY = np.zeros((0, 3), np.float32)
SCALAR = np.array(1.5, np.float32)
BOOLS = np.array([[True, False, True], [False, False, True]])
SMALL_INTS = np.array([[-7, -2, 0], [3, 5, 9]], np.int64)


def case(op_type: str, *inputs: np.ndarray | None, outputs: int = 1, opset: int = 20, **attrs):
    """One node: inputs in ONNX order (``None`` for an absent optional input), attributes."""
    names = "-".join(f"{'x'.join(map(str, a.shape)) or 'scalar'}" for a in inputs if a is not None)
    return pytest.param(op_type, inputs, outputs, opset, attrs, id=f"{op_type}-{names}-{attrs}")


UNARY = ["Abs", "Neg", "Ceil", "Floor", "Sign", "Exp", "Sin", "Cos", "Tanh", "Relu", "Sigmoid"]
UNARY += ["Erf", "Softplus", "Identity"]
COMPARISONS = ["Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"]

CASES = [
    *(case(name, X) for name in UNARY),
    *(case(name, EMPTY) for name in ["Abs", "Exp", "Relu", "Sigmoid", "Erf"]),
    case("Round", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4], np.float32)),  # half to even
    case("Log", POSITIVE),
    case("Sqrt", POSITIVE),
    case("Reciprocal", POSITIVE),
    case("LeakyRelu", X, alpha=0.3),
    case("Gelu", X),
    case("Gelu", X, approximate="tanh"),
    case("IsNaN", np.array([np.nan, 1.0, np.inf], np.float32)),
    case("IsInf", np.array([np.inf, -np.inf, 1.0, np.nan], np.float32), detect_negative=0),
    case("Not", BOOLS),
    *(case(name, X, ROW) for name in ["Add", "Sub", "Mul", "Div"]),
    case("Add", X, SCALAR),
    case("Mul", EMPTY, _floats(1, 3)),
    case("Div", SMALL_INTS, np.array([2, -3, 4], np.int64)),  # integers truncate toward zero
    case("Pow", POSITIVE, np.array([2.0, 0.5, -1.0], np.float32)),
    case("Mod", SMALL_INTS, np.array([3, -4, 5], np.int64)),  # sign of the divisor
    case("Mod", np.array([-7.5, 7.5], np.float32), np.array([2.0, -2.0], np.float32), fmod=1),
    *(case(name, X, ROW) for name in COMPARISONS),
    *(case(name, BOOLS, BOOLS[::-1]) for name in ["And", "Or", "Xor"]),
    case("BitwiseAnd", SMALL_INTS, np.array([6], np.int64)),
    case("BitwiseOr", SMALL_INTS, np.array([6], np.int64)),
    case("Where", BOOLS, _floats(2, 3), _floats(3)),
    *(case(name, X, ROW, _floats(3, 1)) for name in ["Max", "Min", "Mean", "Sum"]),
    case("Clip", X, np.array(-0.5, np.float32), np.array(0.5, np.float32)),
    case("Clip", X, None, np.array(0.1, np.float32)),
    case("Cast", X, to=TensorProto.INT64),
    case("Cast", SMALL_INTS, to=TensorProto.FLOAT),
    case("CastLike", SMALL_INTS, SCALAR),
    *(
        case(name, X, _ints(-1, 0), keepdims=keep, opset=18)
        for name in ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"]
        for keep in (0, 1)
    ),
    case("ReduceL2", X, _ints(1), opset=18),
    case("ReduceSumSquare", X, _ints(2), opset=18),
    case("ReduceSum", X, _ints()),  # no axes: reduce everything
    case("ReduceSum", X, _ints(), noop_with_empty_axes=1),
    case("ReduceMean", X, axes=[1], keepdims=0, opset=11),  # axes as an attribute
    case("ReduceMax", X, opset=11),
    case("ArgMax", np.array([[1, 3, 3], [2, 2, 0]], np.float32), axis=1),
    case("ArgMax", np.array([[1, 3, 3], [2, 2, 0]], np.float32), axis=1, select_last_index=1),
    case("ArgMin", X, axis=-1, keepdims=0),
    case("Softmax", X),
    case("Softmax", X, axis=0),
    case("LogSoftmax", X, axis=1),
    case("MatMul", X, _floats(4, 5)),
    case("MatMul", _floats(1, 3, 4), _floats(2, 4, 2)),  # batch dims broadcast
    case("MatMul", ROW, _floats(4, 2)),  # a vector on the left
    case("MatMul", _floats(3, 4), ROW),  # and on the right
    case("MatMul", EMPTY, _floats(3, 2)),
    case("Gemm", _floats(3, 4), _floats(4, 2), _floats(2)),
    case("Gemm", _floats(4, 3), _floats(2, 4), _floats(1, 1), transA=1, transB=1, alpha=0.5),
    case("Gemm", _floats(3, 4), _floats(4, 2), _floats(3, 2), beta=2.0),
    case("Gemm", _floats(3, 4), _floats(4, 2)),  # no bias
    case("Conv", _floats(1, 2, 5, 5), _floats(3, 2, 3, 3), _floats(3), pads=[1, 1, 1, 1]),
    case("Conv", _floats(2, 4, 6, 5), _floats(4, 1, 2, 2), group=4, strides=[2, 1]),
    case("Conv", _floats(1, 2, 7), _floats(3, 2, 3), dilations=[2]),  # 1-d
    case("MaxPool", _floats(1, 2, 5, 5), kernel_shape=[2, 2], strides=[2, 2]),
    case("AveragePool", _floats(1, 2, 5, 5), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    case("GlobalAveragePool", _floats(2, 3, 4, 5)),
    case("GlobalMaxPool", _floats(2, 3, 4, 5)),
    case(
        "BatchNormalization",
        _floats(2, 3, 4),
        _floats(3),
        _floats(3),
        _floats(3),
        np.abs(_floats(3)) + np.float32(0.1),
        epsilon=1e-3,
    ),
    case("LayerNormalization", X, _floats(4), _floats(4)),
    case("LayerNormalization", X, _floats(3, 4), axis=-2, epsilon=1e-3),
    case("Dropout", X),  # inference: the identity
    case("Reshape", X, _ints(0, -1)),
    case("Reshape", EMPTY, _ints(3, 0), allowzero=1),
    case("Flatten", X, axis=2),
    case("Flatten", X, axis=0),
    case("Transpose", X),
    case("Transpose", X, perm=[1, 2, 0]),
    case("Squeeze", _floats(1, 3, 1), _ints(-1)),
    case("Squeeze", _floats(1, 3, 1)),
    case("Squeeze", _floats(1, 3, 1), axes=[0], opset=11),
    case("Unsqueeze", X, _ints(0, -1)),
    case("Unsqueeze", SCALAR, _ints(0)),
    case("Concat", X, _floats(2, 1, 4), axis=-2),
    case("Concat", EMPTY, _floats(2, 3), axis=0),
    case("Split", _floats(5, 2), _ints(2, 3), outputs=2),
    case("Split", _floats(2, 6), axis=1, num_outputs=3, outputs=3),
    case("Split", _floats(2, 5), axis=1, num_outputs=2, outputs=2),  # uneven: last is smaller
    case("Slice", X, _ints(1, -3), _ints(2, 100), _ints(0, 2)),
    case("Slice", X, _ints(-1), _ints(-1000), _ints(1), _ints(-1)),  # backwards, clamped
    case("Slice", X, _ints(0), _ints(4), _ints(2), _ints(2)),  # step 2
    case("Gather", _floats(5, 3), _ints(4, 0, -1)),
    case("Gather", X, np.array([[2, 0], [1, 1]], np.int64), axis=1),
    case("Gather", _floats(5, 3), np.array(2, np.int64)),  # a scalar index drops the axis
    case("GatherElements", _floats(3, 3), np.array([[2, 0, 1], [1, 1, 0]], np.int64), axis=0),
    case("Expand", ROW, _ints(2, 3, 1)),
    case("Tile", _floats(2, 3), _ints(2, 1)),
    case("Pad", _floats(2, 3), _ints(1, 0, 0, 2), np.array(9.0, np.float32)),
    case("Pad", _floats(3, 3), _ints(0, 2, 0, 1), mode="reflect"),
    case("Pad", _floats(2, 3), _ints(1, 1), None, _ints(-1), mode="edge"),
    case("Shape", X),
    case("Shape", X, start=1, end=-1),
    case("Size", X),
    case("Size", EMPTY),
    case("ConstantOfShape", _ints(2, 3)),
    case(
        "ConstantOfShape", _ints(0, 2), value=helper.make_tensor("v", TensorProto.INT64, [1], [7])
    ),
    case("Range", np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)),
    case(
        "Range", np.array(1.0, np.float32), np.array(-1.0, np.float32), np.array(-0.5, np.float32)
    ),
    case("Constant", value_floats=[1.0, 2.5]),
    case("Constant", value_int=4),
]


def _onnxruntime(op_type, inputs, outputs, opset, attrs) -> list[np.ndarray]:
    names = [f"in{k}" if a is not None else "" for k, a in enumerate(inputs)]
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for name, a in zip(names, inputs, strict=True)
        if a is not None
    ]
    out_names = [f"out{k}" for k in range(outputs)]
    graph_outputs = [helper.make_value_info(name, helper.TypeProto()) for name in out_names]
    node = helper.make_node(op_type, names, out_names, **attrs)
    graph = helper.make_graph([node], op_type, graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: a for name, a in zip(names, inputs, strict=True) if a is not None}
    return session.run(None, feeds)


@pytest.mark.parametrize(("op_type", "inputs", "outputs", "opset", "attrs"), CASES)
def test_op_matches_onnxruntime(op_type, inputs, outputs, opset, attrs):
    want = _onnxruntime(op_type, inputs, outputs, opset, attrs)
    # The executor hands kernels tensor attributes as arrays.
    attributes = {
        name: numpy_helper.to_array(value) if isinstance(value, TensorProto) else value
        for name, value in attrs.items()
    }
    with np.errstate(all="ignore"):
        result = OPS[op_type].kernel(*inputs, **attributes)
    got = result if isinstance(result, tuple) else (result,)
    for mine, theirs in zip(got, want, strict=False):
        mine = np.asarray(mine)
        assert (mine.dtype, mine.shape) == (theirs.dtype, theirs.shape)
        if np.issubdtype(theirs.dtype, np.floating):
            np.testing.assert_allclose(mine, theirs, rtol=2e-6, atol=2e-6)
        else:
            np.testing.assert_array_equal(mine, theirs)


def test_every_registered_op_has_a_case():
    assert set(OPS) - {param.values[0] for param in CASES} == set()


def test_erf_and_gelu_are_within_float32_rounding_of_the_exact_functions():
    # Past the clipping points (4 for erf, 4 sqrt 2 for Gelu) too, where the rational would diverge.
    x = np.linspace(-10, 10, 20001, dtype=np.float32)
    exact_erf = np.array([math.erf(v) for v in x.tolist()])
    exact_gelu = x * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x.tolist()]))

    assert np.abs(OPS["Erf"].kernel(x) - exact_erf).max() < 5e-7
    assert np.abs(OPS["Gelu"].kernel(x) - exact_gelu).max() < 1.5e-6


@pytest.mark.parametrize("op_type", ["Erf", "Gelu"])
def test_chunked_activations_give_each_element_the_same_bits_wherever_it_sits(op_type):
    x = RNG.standard_normal(3 * 65536 + 5).astype(np.float32) * 4  # several chunks and a tail
    pieces = [OPS[op_type].kernel(x[k : k + 1000]) for k in range(0, x.size, 1000)]

    assert OPS[op_type].kernel(x).tobytes() == np.concatenate(pieces).tobytes()


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_of_contiguous_rows_has_the_bits_of_the_general_reduction(op_type):
    # x[:, ::2] is not C-contiguous, so it takes numpy's reduce instead of reduceat.
    x = RNG.standard_normal((3, 10, 32)).astype(np.float32) * 5
    rows = x[:, ::2]
    kernel = OPS[op_type].kernel

    assert kernel(np.ascontiguousarray(rows)).tobytes() == kernel(rows).tobytes()


@pytest.mark.parametrize("axis", [3, -4])
def test_softmax_rejects_an_axis_outside_the_input(axis):
    with pytest.raises(ValueError, match="out of bounds"):
        OPS["Softmax"].kernel(X, axis=axis)
