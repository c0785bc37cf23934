"""Batching never lets one client's rows reach another's answer: graphs that mix rows along the
batch axis are judged not row-independent and run request by request; row-independent models
are batched, and every answer equals the request run alone."""

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_fakes import stored
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import weightdb
from weightdb.engine import prepare
from weightdb.engine.row_independence import row_independence
from weightdb.server import protocol
from weightdb.server.batching import Batcher, Request, run_batch
from weightdb.server.config import ServerConfig
from weightdb.server.metrics import ServerMetrics

FEATURES = 4


def graph(nodes: list, *initializers: onnx.TensorProto, opset: int = 17) -> onnx.ModelProto:
    """x: [batch, 4] float -> y, through ``nodes``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])
    body = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers))
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", opset)])


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def floats(name: str, shape: list[int]) -> onnx.TensorProto:
    values = np.arange(np.prod(shape), dtype=np.float32) / 7 + 0.5
    return helper.make_tensor(name, TensorProto.FLOAT, shape, values)


def mean_over_batch() -> onnx.ModelProto:
    """y = x - mean(x, axis=0): the model of the reported leak."""
    return graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
            helper.make_node("Sub", ["x", "m"], ["y"]),
        ],
        ints("axes", [0]),
        opset=18,
    )


def batchnorm_training() -> onnx.ModelProto:
    stats = [floats(name, [FEATURES]) for name in ("scale", "bias", "mean", "var")]
    node = helper.make_node(
        "BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], training_mode=1
    )
    return graph([node], *stats, opset=15)


def reshape_folding_batch() -> onnx.ModelProto:
    """Folds every row into one, takes a softmax over all of them, unfolds again."""
    return graph(
        [
            helper.make_node("Reshape", ["x", "flat"], ["f"]),
            helper.make_node("Softmax", ["f"], ["s"], axis=-1),
            helper.make_node("Reshape", ["s", "rows"], ["y"]),
        ],
        ints("flat", [1, -1]),
        ints("rows", [-1, FEATURES]),
    )


def row_wise() -> onnx.ModelProto:
    """Reshape keeping the batch, softmax and a mean over other axes, a matmul and a bias."""
    return graph(
        [
            helper.make_node("Reshape", ["x", "split"], ["r"]),
            helper.make_node("Softmax", ["r"], ["s"], axis=-1),
            helper.make_node("ReduceMean", ["s", "axes"], ["m"], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["p"]),
            helper.make_node("Add", ["p", "b"], ["y"]),
        ],
        ints("split", [0, 2, 2]),
        ints("axes", [1]),
        floats("w", [2, 3]),
        floats("b", [3]),
        opset=18,
    )


def gather_rows(stride: int, width: int = FEATURES) -> onnx.ModelProto:
    """Folds x's rows into one axis, then gathers ``width`` elements for row n from
    n * ``stride`` on (row-wise only for stride and width 4, the row's length)."""
    scalar = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [], [v])  # noqa: E731
    return graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"]),
            helper.make_node("Range", ["zero", "n", "one"], ["rows"]),
            helper.make_node("Unsqueeze", ["rows", "axis1"], ["column"]),
            helper.make_node("Mul", ["column", "stride"], ["starts"]),
            helper.make_node("Range", ["zero", "width", "one"], ["j"]),
            helper.make_node("Unsqueeze", ["j", "axis0"], ["offsets"]),
            helper.make_node("Add", ["starts", "offsets"], ["indices"]),
            helper.make_node("Flatten", ["x"], ["flat"], axis=2),
            helper.make_node("Gather", ["flat", "indices"], ["picked"], axis=0),
            helper.make_node("Reshape", ["picked", "target"], ["y"]),
        ],
        scalar("zero", 0),
        scalar("one", 1),
        scalar("stride", stride),
        scalar("width", width),
        ints("axis0", [0]),
        ints("axis1", [1]),
        ints("target", [0, width]),
    )


MIXING = {
    "gather-next-row": (lambda: gather_rows(3, 3), "do not step by the folded rows' block"),
    "gather-past-row": (lambda: gather_rows(4, 5), "what may reach the next row"),
    "mean-over-batch": (mean_over_batch, "reduces over the batch axis"),
    "batchnorm-training": (batchnorm_training, "training mode normalises over the batch"),
    "reshape-folding-batch": (reshape_folding_batch, "folds the batch dimension"),
}


@pytest.mark.parametrize("name", MIXING)
def test_row_mixing_graphs_are_not_row_independent(name: str) -> None:
    build, reason = MIXING[name]
    verdict = row_independence(build())
    assert not verdict.independent
    assert reason in verdict.reason


def two_inputs() -> onnx.ModelProto:
    """y = a + b, with inputs whose first dims are free and unrelated."""
    a, b = (
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [d, FEATURES])
        for n, d in (("a", "rows_a"), ("b", "rows_b"))
    )
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, FEATURES])
    body = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [y])
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])


def test_unknown_ops_and_fixed_batch_are_not_row_independent() -> None:
    custom = graph([helper.make_node("Mystery", ["x"], ["y"], domain="example")])
    assert "Mystery is not known to be row-wise" in row_independence(custom).reason
    fixed = mean_over_batch()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    assert "no free first dimension" in row_independence(fixed).reason
    transposed = graph([helper.make_node("Transpose", ["x"], ["y"])])
    assert "holds the batch on axis 1, not 0" in row_independence(transposed).reason


def test_row_wise_graphs_are_row_independent() -> None:
    assert row_independence(row_wise()).independent
    assert row_independence(gather_rows(4)).independent


@pytest.fixture(scope="module")
def served(tmp_path_factory, exported_models: dict[str, Path]) -> Path:
    """The zoo test models, the row-mixing models that the engine runs, and a row-wise one."""
    folder = tmp_path_factory.mktemp("rows")
    path = folder / "db"
    with weightdb.connect(path) as db:
        for name, source in exported_models.items():
            db.import_model(source, name)
        for name, build in (
            ("mean-over-batch", mean_over_batch),
            ("reshape-folding-batch", reshape_folding_batch),
            ("row-wise", row_wise),
            ("two-inputs", two_inputs),
            ("gather-rows", lambda: gather_rows(4)),
            ("gather-next-row", lambda: gather_rows(3, 3)),
        ):
            onnx.save(build(), folder / f"{name}.onnx")
            db.import_model(folder / f"{name}.onnx", name)
    return path


def test_zoo_models_are_batched_and_ls_and_metadata_say_so(served: Path) -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "weightdb", "--db", str(served), "ls", "--json"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    batched = {m["name"]: m["batched_across_requests"] for m in json.loads(listing.stdout)}
    assert batched == {
        "mlp": True,
        "cnn": True,
        "text": True,
        "row-wise": True,
        "two-inputs": True,
        "gather-rows": True,
        "gather-next-row": False,
        "mean-over-batch": False,
        "reshape-folding-batch": False,
    }
    with weightdb.connect(served, create=False) as db:
        meta = protocol.model_metadata(db, "mean-over-batch")
        assert not meta.batched_across_requests
        assert "ReduceMean node 'm': it reduces over the batch axis" in meta.batching_reason
        assert protocol.model_metadata(db, "mlp").batched_across_requests


def test_no_answer_depends_on_another_requests_rows(served: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, FEATURES)).astype(np.float32)
    b = 100 + rng.standard_normal((3, FEATURES)).astype(np.float32)
    with weightdb.connect(served, create=False) as db:
        for model in ("mean-over-batch", "reshape-folding-batch", "gather-next-row"):
            alone = [db.predict(model, {"x": x})["y"] for x in (a, b)]
            stacked = db.predict(model, {"x": np.concatenate([a, b])})["y"]
            assert not np.allclose(stacked, np.concatenate(alone))  # stacking them would leak
            answers: list = []
            assert run_batch(db, [Request(model, {"x": x}, answers.append) for x in (a, b)]) == 5
            for answer, expected in zip(answers, alone, strict=True):
                np.testing.assert_array_equal(answer["y"], expected)


def test_inputs_of_different_row_counts_are_not_stacked(served: Path) -> None:
    """a of 1 row and b of 2 (broadcast alone) must not be stacked with a request holding a of
    2 rows and b of 1: stacked, the rows of a and b would pair across the two requests."""
    rng = np.random.default_rng(1)
    first = {"a": rng.standard_normal((1, FEATURES)), "b": rng.standard_normal((2, FEATURES))}
    second = {"a": rng.standard_normal((2, FEATURES)), "b": rng.standard_normal((1, FEATURES))}
    requests = [{k: v.astype(np.float32) for k, v in r.items()} for r in (first, second)]
    with weightdb.connect(served, create=False) as db:
        answers: list = []
        run_batch(db, [Request("two-inputs", dict(r), answers.append) for r in requests])
        for answer, inputs in zip(answers, requests, strict=True):
            np.testing.assert_array_equal(answer["y"], db.predict("two-inputs", inputs)["y"])


SHAPES = {"mlp": (100,), "cnn": (1, 8, 8), "text": (7,)} | {
    name: (FEATURES,) for name in ("row-wise", "gather-rows")
}
INPUTS = {"mlp": "x", "cnn": "x", "text": "ids", "row-wise": "x", "gather-rows": "x"}


def sample(model: str, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if model == "text":
        return rng.integers(0, 1000, (rows, *SHAPES[model]), dtype=np.int64)
    return rng.standard_normal((rows, *SHAPES[model])).astype(np.float32)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(SHAPES)), st.integers(1, 4), st.integers(0, 2**16)),
        min_size=2,
        max_size=12,
    )
)
def test_concurrent_requests_get_the_answer_they_get_alone(served: Path, requests) -> None:
    """Random requests sent at once are stacked (the 50 ms wait gathers them into one round),
    and each answer equals the request run alone."""
    with weightdb.connect(served, create=False) as db:
        metrics = ServerMetrics(db, queue_depth=lambda: 0)
        batcher = Batcher(db, ServerConfig(max_wait_ms=50), metrics)
        runs = Counter()  # engine runs per model: fewer than requests when they were stacked
        begin_query = db.pool.begin_query
        db.pool.begin_query = lambda model: (runs.update([model]), begin_query(model))
        arrays = [sample(model, rows, seed) for model, rows, seed in requests]

        async def ask_all() -> list:
            return await asyncio.gather(
                *(
                    batcher.infer(model, {INPUTS[model]: array})
                    for (model, _, _), array in zip(requests, arrays, strict=True)
                )
            )

        batcher.start()
        try:
            answers = asyncio.run(ask_all())
        finally:
            batcher.stop()
            del db.pool.begin_query
        for (model, _, _), array, answer in zip(requests, arrays, answers, strict=True):
            (alone,) = db.predict(model, {INPUTS[model]: array}).values()
            (output,) = answer.values()
            assert output.tobytes() == alone.tobytes()  # batch invariance (engine.gemm)
    asked = Counter(model for model, _, _ in requests)
    assert all(runs[model] < n for model, n in asked.items() if n > 1)  # stacked


def test_minilm_is_row_independent_and_stacks_to_the_same_answers(minilm_onnx: Path) -> None:
    """The encoder builds its attention mask by folding the rows and gathering each row's block
    back with indices from Range(batch size): proven row-wise, and stacked requests with
    different padding get their answers alone."""
    graph, weights, _ = stored(minilm_onnx, (64, 64), min_elements=1024)
    verdict = row_independence(graph, {name: w.shape for name, w in weights.items()})
    assert verdict.independent, verdict.reason
    rng = np.random.default_rng(4)
    ids = rng.integers(1000, 30522, (3, 12))
    mask = np.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 9:] = 0
    model = prepare(graph, weights)
    stacked = model.run({"input_ids": ids, "attention_mask": mask})["output"]
    for row in range(3):
        alone = model.run({"input_ids": ids[row : row + 1], "attention_mask": mask[row : row + 1]})
        assert stacked[row : row + 1].tobytes() == alone["output"].tobytes()


def test_the_analysis_never_reads_external_data() -> None:
    model = mean_over_batch()
    axes = model.graph.initializer[0]
    axes.ClearField("int64_data")
    axes.data_location = TensorProto.EXTERNAL
    axes.external_data.add(key="location", value="../../etc/passwd")
    assert "its axes are not constant" in row_independence(model).reason
