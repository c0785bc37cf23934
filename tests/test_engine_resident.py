"""Weights in the pool: panels are views of resident pages, so a model whose pages fit reads
storage once, models that share pages hold them once, and results do not depend on it."""

import numpy as np
import threadpoolctl
import torch

import weightdb

SETTINGS = weightdb.Settings(block_rows=16, block_cols=16, page_size=4096)


def misses(db) -> int:
    return db.pool.stats().misses


def test_a_model_whose_pages_fit_reads_storage_once_and_one_that_does_not_streams(
    tmp_path, exported_models
):
    x = np.random.default_rng(2).standard_normal((40, 100), dtype=np.float32)
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.import_model(exported_models["mlp"], "mlp")
        size = db.model("mlp").logical_bytes
    with weightdb.connect(tmp_path / "db", budget=None) as db:
        resident = db.predict("mlp", {"x": x})["output"]
        before = misses(db)
        db.predict("mlp", {"x": x})
        assert misses(db) == before
    with weightdb.connect(tmp_path / "db", budget=size // 4) as db:
        streamed = db.predict("mlp", {"x": x})["output"]
        before = misses(db)
        db.predict("mlp", {"x": x})
        assert misses(db) > before
    assert streamed.tobytes() == resident.tobytes()


def test_models_that_share_pages_hold_them_once(tmp_path, exported_models):
    """Two copies of one model share every block: once one has run, the other reads nothing
    from storage, in a pool that holds one model's pages and no more."""
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name in ("a", "b"):
            db.import_model(exported_models["mlp"], name)
        pages = db.store.catalog.page_bytes()
        assert pages < 2 * db.model("a").logical_bytes
    x = np.ones((3, 100), np.float32)
    with weightdb.connect(tmp_path / "db", budget=pages) as db:
        first = db.predict("a", {"x": x})["output"]
        before = misses(db)
        second = db.predict("b", {"x": x})["output"]
        assert misses(db) == before
    assert first.tobytes() == second.tobytes()


def test_products_multiply_by_the_pages_in_place(tmp_path):
    """Linear layers (Gemm with transB) get their block rows stored column-major and back to
    back: every panel is a view of its page, equal to the weight's rows transposed."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(40, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8))
    x = torch.zeros((2, 40))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.from_torch(module, (x,), name="net", input_names=["x"])
        tensors = db.tensors("net")
        for name, parameter in module.state_dict().items():
            if parameter.ndim != 2:
                continue
            weight, matrix = tensors[name], parameter.numpy()
            for i in range(weight.layout.grid[0]):
                r0, r1, _, _ = weight.layout.bounds(i, 0)
                with weight.panels("rows", [i]) as (panel,):
                    assert panel is not None and not panel.flags.owndata
                    assert panel.flags.c_contiguous
                    assert np.array_equal(panel, matrix[r0:r1].T)


def test_products_shared_by_the_engine_threads_are_bitwise_equal_to_streamed(tmp_path):
    """A product big enough for the workers, in memory and streamed, with 2 BLAS threads."""
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
