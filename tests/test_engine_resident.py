"""Weights in the pool: panels are views of resident pages, so a model whose pages fit reads
storage once, models that share pages hold them once, and results do not depend on it."""

import numpy as np
import threadpoolctl
import torch

import weightdb
from weightdb.storage.assembled import AssembledArrays
from weightdb.storage.stored_tensor import TABLE_COPY_AFTER

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


def _narrow_paged(tmp_path) -> tuple[np.ndarray, int, int]:
    """A database whose first weight's panels (200 x 16) cannot fit a 4 KB page: features,
    the bytes of its pages, and the bytes of the panels the engine copies out of them."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(200, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4))
    x = np.random.default_rng(4).standard_normal((5, 200), dtype=np.float32)
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.from_torch(
            module, (torch.from_numpy(x),), name="net", input_names=["x"], output_names=["y"]
        )
        pages = db.store.catalog.page_bytes()
    return x, pages, 48 * 200 * 4


def test_panels_copied_out_of_small_pages_are_kept_beside_them(tmp_path):
    """With room in the budget, the copies stay for the next request, which then counts the
    same page requests as a hit each and reads nothing; without room, none is kept and the
    result is the same bits."""
    x, pages, copied = _narrow_paged(tmp_path)
    with weightdb.connect(tmp_path / "db", budget=None) as db:
        first = db.predict("net", {"x": x})["y"]
        after_first = db.pool.stats()
        assert after_first.resident_bytes == pages + copied
        second = db.predict("net", {"x": x})["y"]
        after_second = db.pool.stats()
        assert after_second.misses == after_first.misses
        requests = after_first.hits + after_first.misses
        assert after_second.hits + after_second.misses == 2 * requests
    with weightdb.connect(tmp_path / "db", budget=pages) as db:
        tight = db.predict("net", {"x": x})["y"]
        assert db.pool.stats().resident_bytes == pages
    assert first.tobytes() == second.tobytes() == tight.tobytes()


def test_kept_copies_never_change_which_pages_are_read(tmp_path, monkeypatch):
    """A pool that streams the model makes the same misses and evictions, request by request,
    whether or not it keeps copies, and never holds more than its budget."""
    x, pages, _ = _narrow_paged(tmp_path)

    def run() -> list[tuple[int, int]]:
        seen = []
        with weightdb.connect(tmp_path / "db", budget=pages // 2) as db:
            for rows in (1, 5, 2, 5):
                db.predict("net", {"x": x[:rows]})
                stats = db.pool.stats()
                assert stats.resident_bytes <= pages // 2
                seen.append((stats.misses, stats.evictions))
        return seen

    keeping = run()
    monkeypatch.setattr(AssembledArrays, "keep", lambda *args: False)
    assert run() == keeping


def test_a_table_whose_pages_are_resident_is_gathered_from_one_kept_copy(tmp_path, exported_models):
    """Once a table has been gathered from often enough, every page of it is resident and the
    budget has room, the pool keeps the table as one array and gathers take from it: the same
    bits, the same pages requested, nothing read; without room, gathers read block rows."""
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.import_model(exported_models["text"], "text")
        pages = db.store.catalog.page_bytes()
        table = db.tensors("text")["embedding.weight"]
    ids = {"ids": np.random.default_rng(5).integers(0, 1000, (6, 9))}
    every_row = {"ids": np.arange(1000).reshape(125, 8)}
    with weightdb.connect(tmp_path / "db", budget=None) as db:
        first = db.predict("text", ids)["output"]
        db.predict("text", every_row)  # every page resident now
        for _ in range(TABLE_COPY_AFTER - 3):
            db.predict("text", ids)
        assert db.pool.stats().resident_bytes == pages  # not copied yet
        before = db.pool.stats()
        second = db.predict("text", ids)["output"]  # kept, then taken from
        after = db.pool.stats()
        assert after.resident_bytes == pages + table.nbytes
        assert after.bytes_read == before.bytes_read and after.misses == before.misses
        assert db.predict("text", ids)["output"].tobytes() == second.tobytes()
        assert db.pool.stats().hits > after.hits  # requests still counted
    with weightdb.connect(tmp_path / "db", budget=pages) as db:
        tight = db.predict("text", ids)["output"]
        assert db.pool.stats().resident_bytes <= pages
    assert first.tobytes() == second.tobytes() == tight.tobytes()
