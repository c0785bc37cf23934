"""Resident weights: kept when a model fits in its buffer pool next to every stored page,
bounded by the budget."""

import gc

import numpy as np
import onnx
import threadpoolctl
import torch

import weightdb
from weightdb.engine import prepare

SETTINGS = weightdb.Settings(block_rows=16, block_cols=16, page_size=4096)


def requests(db) -> int:
    stats = db.pool.stats()
    return stats.hits + stats.misses


def graph(db, name: str) -> onnx.ModelProto:
    (data,) = db.catalog.conn.execute("SELECT graph FROM models WHERE name = ?", (name,)).fetchone()
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model


def test_a_model_that_fits_reads_the_pool_once_and_one_that_does_not_streams(
    tmp_path, exported_models
):
    x = np.random.default_rng(2).standard_normal((40, 100), dtype=np.float32)
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.import_model(exported_models["mlp"], "mlp")
        size = db.model("mlp").logical_bytes
    with weightdb.connect(tmp_path / "db", budget=None) as db:
        resident = db.predict("mlp", {"x": x})["output"]
        before = requests(db)
        db.predict("mlp", {"x": x})
        assert requests(db) == before
    with weightdb.connect(tmp_path / "db", budget=size // 4) as db:
        streamed = db.predict("mlp", {"x": x})["output"]
        before = requests(db)
        db.predict("mlp", {"x": x})
        assert requests(db) > before
    assert streamed.tobytes() == resident.tobytes()


def test_resident_copies_of_live_models_stay_within_the_budget(tmp_path, exported_models):
    """Two models whose copies each fit in the half of the budget reservations may take, but
    not together: the second streams until the first is gone."""
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name in ("a", "b"):
            db.import_model(exported_models["mlp"], name)
        size = db.model("a").logical_bytes
    x = np.ones((3, 100), np.float32)
    with weightdb.connect(tmp_path / "db", budget=size * 3) as db:
        first = prepare(graph(db, "a"), db.tensors("a"))
        second = prepare(graph(db, "b"), db.tensors("b"))
        before = requests(db)
        first.run({"x": x})
        assert requests(db) == before
        second.run({"x": x})
        assert requests(db) > before
        stats = db.pool.stats()
        assert 0 < stats.reserved_bytes <= size  # the first model's copies, the second's none
        assert stats.resident_bytes + stats.reserved_bytes <= size * 3

        del first
        gc.collect()
        third = prepare(graph(db, "b"), db.tensors("b"))
        before = requests(db)
        third.run({"x": x})
        assert requests(db) == before


def test_products_shared_by_the_engine_threads_are_bitwise_equal_to_streamed(tmp_path):
    """A product big enough for the workers, resident and streamed, with 2 BLAS threads."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU())
    x = np.random.default_rng(3).standard_normal((64, 512), dtype=np.float32)
    settings = weightdb.Settings(block_rows=64, block_cols=64, page_size=64 * 64 * 8)
    with weightdb.connect(tmp_path / "db", settings=settings) as db:
        db.from_torch(module, (torch.from_numpy(x),), name="wide", input_names=["x"])
        size = db.model("wide").logical_bytes
    outputs = []
    with threadpoolctl.threadpool_limits(2):
        for budget in (None, size // 4):
            with weightdb.connect(tmp_path / "db", budget=budget) as db:
                outputs.append(db.predict("wide", {"x": x})[db.prepared.get("wide").outputs[0]])
    assert outputs[0].tobytes() == outputs[1].tobytes()


def test_a_copy_that_would_crowd_out_the_pages_of_other_models_is_not_kept(
    tmp_path, exported_models
):
    """Half the budget holds the MLP's copy, but not next to every stored page, so the MLP
    streams and leaves the pool to the pages all models read; alone, it is kept."""
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.import_model(exported_models["mlp"], "mlp")
        db.import_model(exported_models["text"], "text")
        size = db.model("mlp").logical_bytes
        both = db.page_bytes()
    budget = max(2 * size, both)
    assert size + both > budget
    x = np.ones((3, 100), np.float32)
    with weightdb.connect(tmp_path / "db", budget=budget) as db:
        db.predict("mlp", {"x": x})
        before = requests(db)
        db.predict("mlp", {"x": x})
        assert requests(db) > before
        assert db.pool.stats().reserved_bytes == 0
        db.remove_model("text")
        assert size + db.page_bytes() <= budget
    with weightdb.connect(tmp_path / "db", budget=budget) as db:
        db.predict("mlp", {"x": x})
        before = requests(db)
        db.predict("mlp", {"x": x})
        assert requests(db) == before
        assert db.pool.stats().reserved_bytes > 0
