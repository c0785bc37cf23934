"""The engine against onnxruntime on small exported models, run through pin-counting weights."""

import numpy as np
import onnx
import pytest
import torch
from engine_fakes import onnxruntime_run, relative_error, stored
from onnx import TensorProto, helper

from weightdb.engine import (
    ExecutionError,
    InvalidInputError,
    UnsupportedModelError,
    prepare,
    unsupported_ops,
)

torch.manual_seed(0)


CASES = {
    # block shapes chosen so every weight spans several blocks with clipped edges
    "mlp": ((64, 64), lambda rng: rng.standard_normal((33, 100), dtype=np.float32)),
    "cnn": ((8, 16), lambda rng: rng.standard_normal((17, 1, 8, 8), dtype=np.float32)),
    "text": ((64, 64), lambda rng: rng.integers(0, 1000, (21, 9))),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_onnxruntime_and_releases_every_pin(exported_models, name):
    block_shape, make = CASES[name]
    graph, weights, ledger = stored(exported_models[name], block_shape)
    assert any(w.layout.num_blocks > 1 for w in weights.values())
    features = make(np.random.default_rng(7))
    input_name = graph.graph.input[0].name
    (want,) = onnxruntime_run(exported_models[name], {input_name: features})

    got = prepare(graph, weights).run({input_name: features})["output"]

    assert got.dtype == want.dtype and got.shape == want.shape
    assert relative_error(got, want) < 1e-4
    assert ledger.active == 0
    assert ledger.peak == 1  # one block at a time, and only while an operator uses it


def test_gather_reads_only_the_row_blocks_holding_requested_ids(exported_models):
    graph, weights, ledger = stored(exported_models["text"], (64, 64))
    embedding = weights["embedding.weight"]
    block_rows = embedding.layout.block_rows
    model = prepare(graph, weights)
    ledger.read.clear()
    ids = np.array([[3, 5, 3 * block_rows + 1], [block_rows * 3, 7, 999]])

    model.run({"ids": ids})

    rows_read = {i for name, i, _ in ledger.read if name == "embedding.weight"}
    assert rows_read == {0, 3, 999 // block_rows}


def test_batch_one_and_empty_dims_agree_with_bigger_batches(exported_models):
    graph, weights, _ = stored(exported_models["mlp"], (64, 64))
    model = prepare(graph, weights)
    x = np.random.default_rng(1).standard_normal((5, 100), dtype=np.float32)
    whole = model.run({"x": x})["output"]
    single = np.concatenate([model.run({"x": x[k : k + 1]})["output"] for k in range(5)])
    assert single.tobytes() == whole.tobytes()  # batch invariance (engine.gemm)


def test_unsupported_ops_are_listed_and_rejected(exported_models):
    graph = onnx.load(str(exported_models["mlp"]))
    graph.graph.node.append(helper.make_node("Foo", ["output"], ["foo"]))
    graph.graph.node.append(helper.make_node("FusedGemm", ["output"], ["bar"], domain="com.ms"))
    graph.graph.node.append(helper.make_node("Loop", ["output"], ["baz"]))

    assert unsupported_ops(graph) == ["Foo", "Loop", "com.ms.FusedGemm"]
    with pytest.raises(UnsupportedModelError, match=r"Foo, Loop, com\.ms\.FusedGemm"):
        prepare(graph, {})


def test_ops_of_older_opsets_with_other_semantics_are_rejected():
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    old = helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 11)]
    )
    assert unsupported_ops(old) == ["Softmax (opset 11; weightdb implements opset 13 and later)"]


@pytest.fixture(scope="module")
def text_model(exported_models):
    graph, weights, _ = stored(exported_models["text"], (64, 64))
    return prepare(graph, weights)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"tokens": np.zeros((2, 3), np.int64)}, r"expected inputs \['ids'\]; missing \['ids'\]"),
        ({"ids": np.zeros((2, 3), np.float32)}, "input 'ids' must be int64.*got float32"),
        ({"ids": np.zeros(3, np.int64)}, r"must have 2 dimensions \(batch, tokens\), got shape"),
    ],
)
def test_bad_inputs_name_the_input_and_what_was_expected(text_model, feeds, message):
    with pytest.raises(InvalidInputError, match=message):
        text_model.run(feeds)


def test_fixed_and_shared_dims_are_checked(exported_models):
    graph, weights, _ = stored(exported_models["mlp"], (64, 64))
    model = prepare(graph, weights)
    with pytest.raises(InvalidInputError, match=r"dimension 1 is 99, expected 100"):
        model.run({"x": np.zeros((2, 99), np.float32)})
    assert model.run({"x": np.zeros((2, 100), np.float64)})["output"].dtype == np.float32


def test_nan_features_are_computed_not_rejected(text_model, exported_models):
    graph, weights, _ = stored(exported_models["mlp"], (64, 64))
    x = np.full((1, 100), np.nan, np.float32)
    assert np.isnan(prepare(graph, weights).run({"x": x})["output"]).all()


def test_token_id_outside_the_vocabulary_is_a_clear_error(text_model):
    with pytest.raises(ExecutionError, match=r"index 5000 is out of range for 'embedding\.weight'"):
        text_model.run({"ids": np.array([[1, 5000]])})


def _single_node_model(node, shapes: dict[str, list[int]], tmp_path, weight=None):
    """A one-node float32 graph over inputs ``shapes`` (plus an optional initializer 'w')."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [] if weight is None else [onnx.numpy_helper.from_array(weight, "w")]
    graph = helper.make_graph([node], "g", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    path = tmp_path / "node.onnx"
    onnx.save(model, str(path))
    return path


WINDOW_CASES = {
    "maxpool-pads-ceil": helper.make_node(
        "MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1
    ),
    "avgpool-include-pad": helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[3, 2], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool-exclude-pad-ceil": helper.make_node(
        "AveragePool",
        ["x"],
        ["y"],
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
    ),
    "conv-stride-dilation": helper.make_node(
        "Conv", ["x", "w"], ["y"], strides=[2, 1], dilations=[1, 2], pads=[1, 2, 0, 1]
    ),
    "conv-same-groups": helper.make_node(
        "Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", group=2, strides=[2, 2]
    ),
}


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_geometry_matches_onnxruntime(case, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9, 10), dtype=np.float32)
    node = WINDOW_CASES[case]
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    weight = rng.standard_normal((6, 4 // groups, 3, 3), dtype=np.float32)
    path = _single_node_model(
        node, {"x": list(x.shape)}, tmp_path, weight if node.op_type == "Conv" else None
    )
    (want,) = onnxruntime_run(path, {"x": x})
    graph, weights, _ = stored(path, (4, 8), min_elements=1)

    got = prepare(graph, weights).run({"x": x})["y"]

    assert got.shape == want.shape
    assert relative_error(got, want) < 1e-5


def test_a_page_holding_a_whole_layer_is_shared_among_the_workers():
    """One pin per page would make a layer on one page a single task for one worker."""
    from weightdb.engine.blocked import _shared

    assert _shared([list(range(12))], 12, 2) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert _shared([[0, 1, 2], [3, 4, 5, 6], [7]], 8, 2) == [[0, 1], [2], [3, 4], [5, 6], [7]]


def test_activations_write_into_dying_intermediates_but_never_into_inputs_or_constants():
    """Relu and Add reuse an intermediate that dies with them; a graph input, a constant and
    a value another step still reads are left as they were."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),  # h dies here: written in place
        helper.make_node("Relu", ["x"], ["b"]),  # x is a graph input: left alone
        helper.make_node("Relu", ["w"], ["c"]),  # w is a constant: left alone
        helper.make_node("MatMul", ["x", "w"], ["k"]),
        helper.make_node("Relu", ["k"], ["r"]),
        helper.make_node("Add", ["k", "r"], ["s"]),  # k is read again after the Relu
    ]
    floats = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", floats, ["n", 3])],
        [helper.make_tensor_value_info(n, floats, None) for n in ("a", "b", "c", "s")],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {})
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    given = x.copy()
    out = model.run({"x": x})
    assert np.array_equal(x, given)
    assert np.array_equal(out["a"], np.maximum(x @ w, 0))
    assert np.array_equal(out["b"], np.maximum(given, 0))
    assert np.array_equal(out["c"], np.maximum(w, 0))
    assert np.array_equal(out["s"], x @ w + np.maximum(x @ w, 0))
    assert np.array_equal(model.run({"x": x})["c"], np.maximum(w, 0))  # the constant survived
