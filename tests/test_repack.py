"""Repacking: every algorithm's layout (copies of shared blocks included) is stored as solved,
keeps every model bit-identical and its predictions unchanged, survives ``rm`` and an old
catalog, and a crash at any point leaves a consistent database."""

import copy
import json
import math
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import weightdb
from weightdb.cli import app
from weightdb.packing import ALGORITHMS, Instance, solve
from weightdb.storage import store
from weightdb.storage.repack import blocks_per_page

SETTINGS = weightdb.Settings(block_rows=8, block_cols=8, page_size=8 * 8 * 4 * 4)  # 4 blocks
COPYING = [name for name in ALGORITHMS if name != "greedy1"]


def family(rng) -> dict[str, dict[str, np.ndarray]]:
    """A base and fine-tunes that share different parts of it; the parts (10, 9 and 6 blocks)
    do not fill whole pages, so every algorithm but greedy1 copies some shared blocks."""
    base = {
        "embed": rng.standard_normal((40, 16)).astype(np.float32),
        "hidden": rng.standard_normal((24, 24)).astype(np.float32),
        "head": rng.standard_normal((10, 24)).astype(np.float32),
    }
    variants = {"base": base}
    for k, changed in enumerate([["head"], ["head", "hidden"], ["embed"]]):
        variant = dict(base)
        for name in changed:
            variant[name] = base[name] + rng.normal(0, 0.01, base[name].shape).astype(np.float32)
        variants[f"tune{k}"] = variant
    return variants


def build(path: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    models = family(np.random.default_rng(seed))
    with weightdb.connect(path, settings=SETTINGS) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
    return models


def assert_models_intact(path: Path, models: dict, packed: bool = True) -> None:
    """Every model reads back bit-identically, every page verifies and holds a block or a copy
    some model reads, and (once packed) a model reads only pages of blocks it uses."""
    with weightdb.connect(path, create=False) as db:
        for name, arrays in models.items():
            stored = db.tensors(name)
            for tensor, array in arrays.items():
                assert stored[tensor].read().tobytes() == array.tobytes(), (name, tensor)
        assert db.verify() == db.stats()["pages"]
        conn = db.store.catalog.conn
        unused = conn.execute(
            "SELECT COUNT(*) FROM pages WHERE page_id NOT IN (SELECT page_id FROM blocks) "
            "AND page_id NOT IN (SELECT page_id FROM block_copies)"
        ).fetchone()[0]
        assert unused == 0
        if packed:
            uses = defaultdict(set)
            for model_id, block_id in conn.execute(
                "SELECT t.model_id, tb.block_id FROM tensor_blocks tb "
                "JOIN tensors t USING (tensor_id)"
            ):
                uses[model_id].add(block_id)
            for page_id, model_id in set(conn.execute("SELECT * FROM page_readers")):
                entries = db.store.reader.read(db.store.locate_page(page_id)).entries
                assert {e.block_id for e in entries} <= uses[model_id], (page_id, model_id)


def solved_reads(db, algorithm: str) -> dict[str, int]:
    """Pages read per model in the layout ``algorithm`` finds for the database as it is."""
    instance = Instance.from_models(db.store.catalog.model_blocks(), blocks_per_page(db.store))
    return solve(instance, algorithm).layout.pages_read()


def signatures(db) -> dict[int, frozenset[str]]:
    users = defaultdict(set)
    for block_id, name in db.store.catalog.conn.execute(
        "SELECT tb.block_id, m.name FROM tensor_blocks tb JOIN tensors t USING (tensor_id) "
        "JOIN models m USING (model_id)"
    ):
        users[block_id].add(name)
    return {block: frozenset(names) for block, names in users.items()}


def test_greedy1_layout_is_optimal_without_copies_and_keeps_models_intact(tmp_path):
    models = build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        report = db.pack("greedy1", force=True)
        assert report.copied_blocks == 0
        assert db.store.catalog.conn.execute("SELECT COUNT(*) FROM block_copies").fetchone()[0] == 0
        signature_of = signatures(db)
        groups = defaultdict(int)
        for sig in signature_of.values():
            groups[sig] += 1
        capacity = report.blocks_per_page
        assert report.pages_after == sum(math.ceil(n / capacity) for n in groups.values())
        pages = defaultdict(set)
        for block_id, page_id in db.store.catalog.conn.execute(
            "SELECT block_id, page_id FROM blocks"
        ):
            pages[page_id].add(signature_of[block_id])
        assert all(len(sigs) == 1 for sigs in pages.values())  # no foreign blocks for anyone
        for name in models:
            expected = sum(math.ceil(n / capacity) for sig, n in groups.items() if name in sig)
            assert report.pages_read_after[name]["pages"] == expected
    assert_models_intact(tmp_path / "db", models)


def test_in_flight_readers_and_predictions_survive_a_repack(tmp_path):
    models = build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        planned = db.tensors("tune1")["hidden"]
        db.pack(force=True)
        db.pool.discard(set(db.pool.resident()))
        assert planned.read().tobytes() == models["tune1"]["hidden"].tobytes()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_layout_is_stored_as_solved_and_keeps_models_intact(tmp_path, algorithm):
    models = build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        expected = solved_reads(db, algorithm)
        report = db.pack(algorithm, force=True)
        reads = {name: row["pages"] for name, row in report.pages_read_after.items()}
        assert reads == expected
        stats = db.stats()
        assert reads == {name: row["pages"] for name, row in stats["pages_read_per_model"].items()}
        assert (report.copied_blocks > 0) == (algorithm in COPYING)
        assert report.page_bytes_after == stats["page_bytes"]
    assert_models_intact(tmp_path / "db", models)


@pytest.mark.parametrize("algorithm", ["weightdb", "two-stage"])
def test_pages_are_written_in_the_order_the_first_model_reads_them(tmp_path, algorithm):
    # Reading base front to back visits its pages in ascending file order, so a cold read of
    # it streams through the segment file; the layout's own page order follows no model.
    build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        db.pack(algorithm, force=True)
        visits = [
            (location.file, location.offset)
            for tensor in db.tensors("base").values()
            for page_id, _ in tensor.locations.reshape(-1, 2).tolist()
            for location in [db.store.locate_page(page_id)]
        ]
    first_visits = list(dict.fromkeys(visits))
    assert first_visits == sorted(first_visits)


def test_weightdb_reads_fewer_pages_than_greedy1_in_fewer_pages(tmp_path):
    build(tmp_path / "db")
    reports = {}
    with weightdb.connect(tmp_path / "db") as db:
        for algorithm in ("greedy1", "weightdb"):
            reports[algorithm] = db.pack(algorithm, force=True)
    greedy1, ours = reports["greedy1"], reports["weightdb"]
    assert ours.pages_after < greedy1.pages_after
    assert all(
        row["pages"] <= greedy1.pages_read_after[name]["pages"]
        for name, row in ours.pages_read_after.items()
    )
    assert sum(r["pages"] for r in ours.pages_read_after.values()) < sum(
        r["pages"] for r in greedy1.pages_read_after.values()
    )


def mlp_family(path: Path) -> np.ndarray:
    """Four MLPs with graphs, fine-tuned from one base in different layers (as ``family``);
    returns an input batch."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(
        torch.nn.Linear(16, 40),
        torch.nn.ReLU(),
        torch.nn.Linear(40, 24),
        torch.nn.Tanh(),
        torch.nn.Linear(24, 10),
    )
    with weightdb.connect(path, settings=SETTINGS) as db:
        for name, changed in [("base", []), ("tune0", [4]), ("tune1", [2, 4]), ("tune2", [0])]:
            module = copy.deepcopy(base)
            for layer in changed:
                torch.nn.init.normal_(module[layer].weight)
            db.from_torch(module, (torch.zeros(1, 16),), name=name, input_names=["x"])
    return np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)


def test_predictions_and_exports_stay_identical_under_every_layout(tmp_path):
    x = mlp_family(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        names = [m.name for m in db.models()]
        want = {name: db.predict(name, {"x": x}) for name in names}
        exported = {
            name: db.export_model(name, tmp_path / f"{name}.onnx").read_bytes() for name in names
        }
        copied = 0
        for algorithm in ALGORITHMS:  # each repack starts from the previous one's copies
            copied += db.pack(algorithm, force=True).copied_blocks
            for name in names:
                got = db.predict(name, {"x": x})
                assert all(got[k].tobytes() == v.tobytes() for k, v in want[name].items()), name
                out = db.export_model(name, tmp_path / f"{name}-{algorithm}.onnx")
                assert out.read_bytes() == exported[name], (name, algorithm)
        assert copied > 0


def test_removing_a_model_after_a_copying_pack_keeps_the_others_and_reclaims_pages(
    tmp_path, monkeypatch
):
    models = build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        db.pack("two-stage", force=True)
        conn = db.store.catalog.conn
        (removed,) = conn.execute(
            "SELECT m.name FROM block_copies JOIN models m USING (model_id) "
            "GROUP BY model_id ORDER BY COUNT(*) DESC, m.name LIMIT 1"
        ).fetchone()
        pages_before = db.stats()["pages"]
        db.remove_model(removed)
        del models[removed]
        assert db.stats()["pages"] < pages_before
        assert conn.execute("SELECT COUNT(*) FROM retired_pages").fetchone()[0] > 0
        monkeypatch.setattr(store, "RETIRED_GRACE_SECONDS", 0.0)
        with db.store.writer_lock:
            db.store.collect_garbage()
        in_use = {file for (file,) in conn.execute("SELECT file FROM pages")}
        assert {f.name for f in db.store.pages_dir.iterdir()} == in_use
    assert_models_intact(tmp_path / "db", models)
    with weightdb.connect(tmp_path / "db") as db:
        db.pack(force=True)
    assert_models_intact(tmp_path / "db", models)


def test_an_old_catalog_without_copies_opens_and_packs(tmp_path):
    models = build(tmp_path / "db")
    with sqlite3.connect(tmp_path / "db" / "catalog.sqlite") as old:
        for statement in (
            "DROP VIEW block_reads",
            "DROP VIEW page_readers",
            "DROP TABLE block_copies",
        ):
            old.execute(statement)
    assert_models_intact(tmp_path / "db", models, packed=False)
    with weightdb.connect(tmp_path / "db") as db:
        assert db.pack(force=True).copied_blocks > 0
    assert_models_intact(tmp_path / "db", models)


def test_cli_packs_with_dissolve_by_default_and_takes_any_algorithm(tmp_path):
    build(tmp_path / "db")
    runner = CliRunner()
    for args, algorithm in (([], "dissolve"), (["--algorithm", "two-stage"], "two-stage")):
        result = runner.invoke(
            app, ["--db", str(tmp_path / "db"), "pack", "--json", "--force", *args]
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["algorithm"] == algorithm and report["copied_blocks"] > 0
        assert report["page_bytes_after"] > 0


PACKER = """
import os, signal, sys, time, weightdb
from weightdb.storage import buffer_pool, page_files
from weightdb.storage.catalog import Catalog
path, point, algorithm = sys.argv[1:4]
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
append, appended = page_files.SegmentWriter.append, []
def append_or_die(*args, **kwargs):
    appended.append(1)
    if point == "mid-write" and len(appended) == 3:
        die()
    if point == "slow disk":  # so that kills at random instants land while pages are written
        time.sleep(0.05)
    return append(*args, **kwargs)
page_files.SegmentWriter.append = append_or_die
if point == "pages written":
    page_files.SegmentWriter.finish = die
elif point == "inside the commit":
    Catalog.retire_pages = die
elif point == "after the commit":
    buffer_pool.BufferPool.discard = die
with weightdb.connect(path) as db:
    db.pack(algorithm, force=True)
"""


def run_packer(path: Path, point: str, algorithm: str = "weightdb") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PACKER, str(path), point, algorithm])


@pytest.mark.parametrize("algorithm", ["weightdb", "two-stage"])
@pytest.mark.parametrize(
    "point", ["mid-write", "pages written", "inside the commit", "after the commit"]
)
def test_sigkill_during_repack_leaves_a_consistent_database(tmp_path, point, algorithm):
    models = build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:  # killed while leaving a layout with copies
        db.pack("greedy2", force=True)
    assert run_packer(tmp_path / "db", point, algorithm).wait(timeout=120) == -signal.SIGKILL
    assert_models_intact(tmp_path / "db", models)
    with weightdb.connect(tmp_path / "db") as db:  # and the next writer can pack it
        db.pack(algorithm, force=True)
    assert_models_intact(tmp_path / "db", models)


def test_sigkill_at_random_instants_during_repack(tmp_path):
    build(tmp_path / "timing")
    start = time.perf_counter()
    assert run_packer(tmp_path / "timing", "slow disk").wait(timeout=120) == 0
    duration = time.perf_counter() - start
    rng = random.Random(5)
    outcomes = set()
    for trial in range(8):
        path = tmp_path / f"db{trial}"
        models = build(path, seed=trial)
        process = run_packer(path, "slow disk")
        time.sleep(rng.uniform(0, duration))
        process.send_signal(signal.SIGKILL)
        process.wait()
        with weightdb.connect(path, create=False) as db:
            in_use = {file for (file,) in db.store.catalog.conn.execute("SELECT file FROM pages")}
            packed = db.store.catalog.layout_generation() > 0
        orphans = {f.name for f in (path / "pages").iterdir()} - in_use
        outcomes.add("packed" if packed else "killed mid-write" if orphans else "not started")
        assert_models_intact(path, models, packed=packed)
    assert "killed mid-write" in outcomes, outcomes


def test_pack_keeps_the_current_layout_unless_the_new_one_is_better(tmp_path):
    models = build(tmp_path / "db")
    runner = CliRunner()
    with weightdb.connect(tmp_path / "db") as db:
        assert not db.pack("greedy1", force=True).kept_current
        best = db.pack("weightdb")  # reads fewer pages than greedy1's layout
        assert not best.kept_current
        files = sorted(p.name for p in db.store.pages_dir.iterdir())
        generation = db.store.catalog.layout_generation()
        worse = db.pack("baseline")
        assert worse.kept_current
        declined = tuple(worse.candidate.values())  # weighted pages read, pages, bytes
        assert declined > (best.weighted_pages_read_after, best.pages_after, best.page_bytes_after)
        assert worse.pages_after == worse.pages_before == best.pages_after
        assert worse.pages_read_after == best.pages_read_after
        assert worse.copied_blocks == best.copied_blocks
        assert sorted(p.name for p in db.store.pages_dir.iterdir()) == files  # new files deleted
        assert db.store.catalog.layout_generation() == generation
    result = runner.invoke(app, ["--db", str(tmp_path / "db"), "pack", "--algorithm", "baseline"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.startswith(f"kept the current layout: {best.pages_after} pages, 7.00 pages read")
    assert "the baseline layout was not better (19 pages" in said
    with weightdb.connect(tmp_path / "db") as db:
        forced = db.pack("baseline", force=True)
        assert not forced.kept_current
        assert forced.weighted_pages_read_after == forced.candidate["weighted_pages_read"]
    assert_models_intact(tmp_path / "db", models)
