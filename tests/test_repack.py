"""Repacking: layouts keep every model bit-identical, hold one sharing signature per page,
and a crash at any point leaves a consistent database."""

import math
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import weightdb
from weightdb.errors import WeightDBError
from weightdb.storage import repack as repack_module

SETTINGS = weightdb.Settings(block_rows=8, block_cols=8, page_size=8 * 8 * 4 * 4)  # 4 blocks


def family(rng) -> dict[str, dict[str, np.ndarray]]:
    """A base and fine-tunes that share different parts of it."""
    base = {
        "embed": rng.standard_normal((64, 16)).astype(np.float32),
        "hidden": rng.standard_normal((32, 24)).astype(np.float32),
        "head": rng.standard_normal((10, 32)).astype(np.float32),
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


def assert_models_intact(path: Path, models: dict) -> None:
    with weightdb.connect(path, create=False) as db:
        for name, arrays in models.items():
            stored = db.tensors(name)
            for tensor, array in arrays.items():
                assert stored[tensor].read().tobytes() == array.tobytes(), (name, tensor)
        assert db.verify() == db.stats()["pages"]


def signatures(db) -> dict[int, frozenset[str]]:
    users = defaultdict(set)
    for block_id, name in db.catalog.conn.execute(
        "SELECT tb.block_id, m.name FROM tensor_blocks tb JOIN tensors t USING (tensor_id) "
        "JOIN models m USING (model_id)"
    ):
        users[block_id].add(name)
    return {block: frozenset(names) for block, names in users.items()}


def test_greedy1_layout_is_optimal_without_copies_and_keeps_models_intact(tmp_path):
    models = build(tmp_path / "db")
    with weightdb.connect(tmp_path / "db") as db:
        report = db.pack()
        signature_of = signatures(db)
        groups = defaultdict(int)
        for sig in signature_of.values():
            groups[sig] += 1
        capacity = report.blocks_per_page
        assert report.pages_after == sum(math.ceil(n / capacity) for n in groups.values())
        pages = defaultdict(set)
        for block_id, page_id in db.catalog.conn.execute("SELECT block_id, page_id FROM blocks"):
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
        db.pack()
        db.pool.discard(set(db.pool.resident()))
        assert planned.read().tobytes() == models["tune1"]["hidden"].tobytes()


def test_a_layout_with_copies_is_refused_and_nothing_changes(tmp_path, monkeypatch):
    models = build(tmp_path / "db")

    def copying(models_blocks, capacity, frequencies, algorithm):
        first = next(iter(models_blocks.values()))
        return [[first[0]], [first[0], *first[1:2]]]

    monkeypatch.setattr(repack_module, "pack", copying)
    with weightdb.connect(tmp_path / "db") as db:
        before = db.stats()
        with pytest.raises(WeightDBError, match=r"several pages.*greedy1"):
            db.pack("two-stage")
        assert db.stats()["pages"] == before["pages"]
    assert_models_intact(tmp_path / "db", models)


PACKER = """
import os, sys, weightdb
from weightdb.storage import page_files, repack
point = sys.argv[2]
die = lambda *args, **kwargs: os._exit(9)
if point == "pages written":
    page_files.SegmentWriter.finish = die
elif point == "inside the commit":
    repack.retire_pages = die
elif point == "after the commit":
    weightdb.database.BufferPool.discard = die
with weightdb.connect(sys.argv[1]) as db:
    db.pack()
"""


@pytest.mark.parametrize("point", ["pages written", "inside the commit", "after the commit"])
def test_a_crash_during_repack_leaves_a_consistent_database(tmp_path, point):
    models = build(tmp_path / "db")
    crashed = subprocess.run(
        [sys.executable, "-c", PACKER, str(tmp_path / "db"), point], timeout=120
    )
    assert crashed.returncode == 9
    assert_models_intact(tmp_path / "db", models)
    with weightdb.connect(tmp_path / "db") as db:  # and the next writer can pack it
        db.pack()
    assert_models_intact(tmp_path / "db", models)


def test_sigkill_at_random_instants_during_repack(tmp_path):
    rng = random.Random(5)
    for trial in range(6):
        path = tmp_path / f"db{trial}"
        models = build(path, seed=trial)
        process = subprocess.Popen([sys.executable, "-c", PACKER, str(path), "none"])
        time.sleep(rng.uniform(0.5, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_models_intact(path, models)
