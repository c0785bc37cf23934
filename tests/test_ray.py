"""Batch inference over tables, locally and on Ray: results bit-identical to ``db.predict``, in
input order, rows routed by model, a killed actor costing nothing, budgets applied per actor.

One Ray cluster (``num_cpus=2``) serves every test here; it starts once per session.
"""

import copy
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SMALL
from torch_models import MLP
from typer.testing import CliRunner

import weightdb
from weightdb.cli import app
from weightdb.errors import WeightDBError
from weightdb.scaleout.table_predict import model_pages, open_reader, predict_table

ray = pytest.importorskip("ray")
weightdb_ray = pytest.importorskip("weightdb.ray")

ROWS = 600
ACTOR_TITLE = "ray::MapWorker(MapBatches(_PredictActor))"


@pytest.fixture(scope="module")
def mlp_db(tmp_path_factory) -> Path:
    """Three MLPs: ``b`` is ``a`` with its last layer retrained (they share pages), ``c`` is
    unrelated."""
    path = tmp_path_factory.mktemp("ray") / "db"
    torch.manual_seed(7)
    base, other = MLP(), MLP()
    child = copy.deepcopy(base)
    with torch.no_grad():
        child.layers[4].weight.add_(0.25)
    with weightdb.connect(path, settings=SMALL) as db:
        for name, module in (("a", base), ("b", child), ("c", other)):
            db.from_torch(
                module,
                (torch.randn(2, 100),),
                name=name,
                input_names=["x"],
                output_names=["output"],
            )
    return path


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(3)
    features = rng.standard_normal((ROWS, 100)).astype(np.float32)
    return pa.table(
        {
            "id": np.arange(ROWS)[::-1],
            "model": rng.choice(["a", "b", "c"], ROWS),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 100),
        }
    )


def expected(db_path: Path, table: pa.Table, model: str | None = None) -> np.ndarray:
    """Each row predicted alone by ``db.predict``: the reference every path must match."""
    features = table["x"].combine_chunks().flatten().to_numpy().reshape(-1, 100)
    names = [model] * table.num_rows if model else table["model"].to_pylist()
    with weightdb.connect(db_path, create=False) as db:
        return np.stack(
            [
                db.predict(name, {"x": features[i : i + 1]})["output"][0]
                for i, name in enumerate(names)
            ]
        )


def predictions(result: pa.Table) -> np.ndarray:
    return np.stack([np.asarray(row, dtype=np.float32) for row in result["prediction"].to_pylist()])


def test_sharing_groups_come_from_the_catalog(mlp_db):
    with weightdb.connect(mlp_db, create=False) as db:
        pages = model_pages(db, ["a", "b", "c"])
    assert pages["a"] & pages["b"]
    assert not pages["a"] & pages["c"]


def test_local_table_predictions_are_bit_identical_and_in_order(mlp_db, table):
    result = predict_table(mlp_db, table, "x", model_column="model", batch_rows=64)
    assert result.drop_columns(["prediction"]).equals(table)
    assert result.schema.field("prediction").type == pa.list_(pa.float32())
    np.testing.assert_array_equal(predictions(result), expected(mlp_db, table))


@pytest.mark.parametrize("actors", [1, 2])
def test_ray_routes_rows_by_model_column_bit_identically(ray_cluster, mlp_db, table, actors):
    dataset = ray.data.from_arrow(table).repartition(6)
    result = weightdb_ray.to_table(
        weightdb_ray.predict(
            dataset, mlp_db, features="x", model_column="model", actors=actors, batch_rows=50
        )
    )
    assert result.equals(predict_table(mlp_db, table, "x", model_column="model"))
    np.testing.assert_array_equal(predictions(result), expected(mlp_db, table))


def test_pool_stats_per_actor_under_each_routing(ray_cluster, mlp_db, table):
    """Round-robin sends every model to both actors, so each reads what a fresh pool reads for
    a, b and c; affinity splits the models and reads less in all, with the same bits."""
    with open_reader(mlp_db) as db:
        for name in ("a", "b", "c"):
            db.predict(name, {"x": np.zeros((1, 100), np.float32)})
        every_model = db.pool.stats().bytes_read
    dataset = ray.data.from_arrow(table).repartition(4)
    results, stats = {}, {}
    for routing in ("round-robin", "affinity"):
        collector = weightdb_ray.PoolStatsCollector()
        job = weightdb_ray.predict(
            dataset, mlp_db, features="x", model_column="model", actors=2, routing=routing,
            pool_stats=collector,
        )  # fmt: skip
        results[routing] = weightdb_ray.to_table(job)
        stats[routing] = collector.per_actor()
    assert results["affinity"].equals(results["round-robin"])
    robin = stats["round-robin"]
    assert sorted(robin) == [0, 1]
    assert [robin[actor]["bytes_read"] for actor in (0, 1)] == [every_model, every_model]
    assert [robin[actor]["rows"] for actor in (0, 1)] == [ROWS // 2, ROWS // 2]
    affinity = stats["affinity"]
    assert sum(counters["rows"] for counters in affinity.values()) == ROWS
    assert sum(counters["bytes_read"] for counters in affinity.values()) < 2 * every_model
    with pytest.raises(WeightDBError, match="unknown routing 'hash'"):
        weightdb_ray.predict(dataset, mlp_db, features="x", model="a", routing="hash")


def _actor_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(ACTOR_TITLE.encode()):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_actor_loses_and_duplicates_no_row(ray_cluster, mlp_db):
    rng = np.random.default_rng(5)
    rows = 3_000
    features = rng.standard_normal((rows, 100)).astype(np.float32)
    table = pa.table(
        {
            "row": np.arange(rows),
            "model": rng.choice(["a", "b", "c"], rows),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 100),
        }
    )
    killed: list[int] = []

    def kill_first_actor() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            pids = _actor_pids()
            if pids:
                time.sleep(2)  # let it take batches first
                pid = min(pids)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_actor)
    killer.start()
    result = weightdb_ray.to_table(
        weightdb_ray.predict(
            ray.data.from_arrow(table).repartition(40),
            mlp_db,
            features="x",
            model_column="model",
            actors=2,
            batch_rows=4,
        )
    )
    killer.join()
    assert killed, "no actor was running to kill"
    assert result["row"].to_pylist() == list(range(rows))
    assert result.equals(predict_table(mlp_db, table, "x", model_column="model"))


def test_one_model_for_every_row_within_each_actors_budget(ray_cluster, mlp_db, table):
    small = weightdb_ray.to_table(
        weightdb_ray.predict(
            ray.data.from_arrow(table), mlp_db, features="x", model="a", actors=2, budget="48KiB"
        )
    )
    assert small["id"].equals(table["id"])
    np.testing.assert_array_equal(predictions(small), expected(mlp_db, table, "a"))
    tiny = weightdb_ray.predict(
        ray.data.from_arrow(table), mlp_db, features="x", model="a", actors=2, budget="1KiB"
    )
    with pytest.raises(Exception, match="budget"):
        weightdb_ray.to_table(tiny)


def test_bad_columns_are_refused_before_the_job_runs(ray_cluster, mlp_db, table):
    dataset = ray.data.from_arrow(table)
    with pytest.raises(WeightDBError, match="has no column 'y'"):
        weightdb_ray.predict(dataset, mlp_db, features="y", model="a")
    scored = dataset.add_column("prediction", lambda batch: batch["id"])
    with pytest.raises(WeightDBError, match="already has column 'prediction'"):
        weightdb_ray.predict(scored, mlp_db, features="x", model="a")


def test_give_exactly_one_of_model_and_model_column(ray_cluster, mlp_db, table):
    with pytest.raises(WeightDBError, match="exactly one"):
        weightdb_ray.predict(ray.data.from_arrow(table), mlp_db, features="x", actors=1)
    with pytest.raises(WeightDBError, match="exactly one"):
        predict_table(mlp_db, table, "x", model="a", model_column="model")


@pytest.mark.parametrize("use_ray", [False, True])
def test_cli_predict_table(ray_cluster, mlp_db, table, tmp_path, use_ray):
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, source, row_group_size=100)
    args = ["--db", str(mlp_db), "predict-table", str(source), "--features", "x"]
    args += ["--model-column", "model", "--output", str(output)]
    args += ["--ray", "--actors", "2"] if use_ray else []
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert f"predicted {ROWS} rows" in outcome.output
    assert pq.read_table(output).equals(predict_table(mlp_db, table, "x", model_column="model"))
