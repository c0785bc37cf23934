"""Prediction through the database: weights stream from pages through the buffer pool."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from engine_fakes import onnxruntime_run, relative_error

import weightdb
from weightdb.engine import UnsupportedModelError
from weightdb.errors import BudgetExceededError

# Pages small enough that a tenth of each model still holds a page (the CNN is only 8 KB).
SETTINGS = {
    "mlp": weightdb.Settings(block_rows=16, block_cols=16, page_size=4096),
    "cnn": weightdb.Settings(block_rows=4, block_cols=8, page_size=256),
    "text": weightdb.Settings(block_rows=16, block_cols=16, page_size=4096),
}
FEATURES = {
    "mlp": lambda rng: {"x": rng.standard_normal((33, 100), dtype=np.float32)},
    "cnn": lambda rng: {"x": rng.standard_normal((17, 1, 8, 8), dtype=np.float32)},
    "text": lambda rng: {"ids": rng.integers(0, 1000, (21, 9))},
}


def model_bytes(db, name: str) -> int:
    return db.model(name).logical_bytes


@pytest.fixture(scope="module")
def small_dbs(tmp_path_factory, exported_models) -> dict[str, Path]:
    """One database per model, each holding that model under its own name."""
    paths = {}
    for name, onnx_path in exported_models.items():
        paths[name] = tmp_path_factory.mktemp("predict") / name
        with weightdb.connect(paths[name], settings=SETTINGS[name]) as db:
            db.import_model(onnx_path, name=name)
    return paths


@pytest.mark.parametrize("name", FEATURES)
def test_matches_onnxruntime(small_dbs, exported_models, name):
    feeds = FEATURES[name](np.random.default_rng(5))
    (want,) = onnxruntime_run(exported_models[name], feeds)
    with weightdb.connect(small_dbs[name]) as db:
        got = db.predict(name, feeds)["output"]
        assert db.pool.stats().misses > 0  # the weights really came from pages
    assert got.shape == want.shape
    assert relative_error(got, want) < 1e-4


@pytest.mark.parametrize("name", FEATURES)
def test_ten_percent_budget_is_bitwise_equal_to_unlimited(small_dbs, name):
    feeds = FEATURES[name](np.random.default_rng(6))
    with weightdb.connect(small_dbs[name]) as db:
        unlimited = db.predict(name, feeds)["output"]
        budget = model_bytes(db, name) // 10
    with weightdb.connect(small_dbs[name], budget=budget) as db:
        limited = db.predict(name, feeds)["output"]
        stats = db.pool.stats()
    assert limited.tobytes() == unlimited.tobytes()
    # The model did not fit: pages were evicted to make room, and the budget held.
    assert stats.evictions > 0 and stats.bytes_read > budget
    assert stats.resident_bytes <= budget


def test_each_prediction_tells_the_pool_a_query_starts(small_dbs):
    feeds = FEATURES["mlp"](np.random.default_rng(7))
    with weightdb.connect(small_dbs["mlp"]) as db:
        policy, seen = db.pool.policy, []
        original = policy.on_query
        policy.on_query = lambda model: (seen.append(model), original(model))
        db.predict("mlp", feeds)
        db.predict("mlp", feeds)
    assert seen == ["mlp", "mlp"]


def test_a_budget_below_one_page_names_the_budget_needed(small_dbs):
    needed = r"raise the budget to at least \d+ bytes"
    with weightdb.connect(small_dbs["mlp"], budget=1000) as db:
        features = FEATURES["mlp"](np.random.default_rng(0))
        with pytest.raises(BudgetExceededError, match=needed):
            db.predict("mlp", features)


def test_minilm_through_the_pool_at_ten_percent(tmp_path, minilm_onnx):
    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 30522, (3, 24))
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    (want,) = onnxruntime_run(minilm_onnx, feeds)
    settings = weightdb.Settings(block_rows=128, block_cols=128, page_size=1 << 20)
    with weightdb.connect(tmp_path / "db", settings=settings) as db:
        db.import_model(minilm_onnx, name="minilm")
        unlimited = db.predict("minilm", feeds)["output"]
        budget = model_bytes(db, "minilm") // 10
    with weightdb.connect(tmp_path / "db", budget=budget) as db:
        limited = db.predict("minilm", feeds)["output"]
        assert db.pool.stats().evictions > 0
    assert relative_error(unlimited, want) < 1e-4
    assert limited.tobytes() == unlimited.tobytes()


def test_from_torch_imports_a_module_with_its_graph(db):
    module = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.GELU(), torch.nn.Linear(40, 3))
    info = db.from_torch(module, (torch.zeros(1, 12),), name="tiny", input_names=["x"])
    assert info.has_graph
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    want = module(torch.from_numpy(x)).detach().numpy()
    assert relative_error(db.predict("tiny", {"x": x})["output_0"], want) < 1e-4


def test_unsupported_ops_are_refused_at_import_listing_them(db, tmp_path):
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Relu", ["x"], ["h"]),
            onnx.helper.make_node("Hardmax", ["h"], ["y"]),
            onnx.helper.make_node("Det", ["h"], ["z"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 3])],
        [
            onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 3]),
            onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, []),
        ],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "odd.onnx")
    with pytest.raises(UnsupportedModelError, match="Det, Hardmax; nothing was imported"):
        db.import_model(tmp_path / "odd.onnx", name="odd")
    assert db.models() == []


def test_a_model_without_a_graph_cannot_predict(db):
    db.import_arrays("weights_only", {"w": np.ones((4, 4), np.float32)})
    with pytest.raises(weightdb.WeightDBError, match="no graph"):
        db.predict("weights_only", {"x": np.ones((1, 4), np.float32)})


def test_cli_predict_from_npz_and_parquet(small_dbs, tmp_path):
    x = np.random.default_rng(9).standard_normal((8, 100), dtype=np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    pq.write_table(pa.table({"x": pa.array(list(x))}), tmp_path / "in.parquet")
    with weightdb.connect(small_dbs["mlp"]) as db:
        expected = db.predict("mlp", {"x": x})["output"]
    for source in ("in.npz", "in.parquet"):
        out = tmp_path / f"{source}.out.npz"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "weightdb",
                "--db",
                str(small_dbs["mlp"]),
                "predict",
                "mlp",
                "--input",
                str(tmp_path / source),
                "--output",
                str(out),
                "--budget",
                "8KiB",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "from storage" in result.stdout
        with np.load(out) as outputs:
            assert outputs["output"].tobytes() == expected.tobytes()


def test_closing_a_database_releases_compiled_models_and_pages(small_dbs):
    db = weightdb.connect(small_dbs["mlp"], budget=None)
    db.predict("mlp", FEATURES["mlp"](np.random.default_rng(0)))
    assert db.pool.stats().resident_pages > 0
    db.close()
    stats = db.pool.stats()
    assert stats.resident_pages == 0 and stats.resident_bytes == 0
