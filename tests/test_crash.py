"""A writer killed with SIGKILL at any instant leaves a database that opens, lists only
complete models, and exports each of them bit-identically."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import weightdb
from weightdb.storage.page_files import segment_number

IMPORTER = """
import sys, weightdb
from weightdb.storage.settings import Settings
db = weightdb.connect(sys.argv[1], settings=Settings(64, 64, 65536))
for source in sys.argv[2:]:
    name = source.rsplit("/", 1)[-1].split(".")[0]
    db.import_model(source, name=name)
    print("imported", name, flush=True)
"""
TRIALS = 24


def make_sources(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    base = {f"layer{i}": rng.standard_normal((512, 384)).astype(np.float32) for i in range(6)}
    sources = []
    for index in range(3):
        arrays = dict(base)
        arrays[f"layer{index}"] = rng.standard_normal((512, 384)).astype(np.float32)
        path = folder / f"model{index}.safetensors"
        save_file(arrays, path)
        sources.append(path)
    return sources


def run_importer(db: Path, sources: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", IMPORTER, str(db), *map(str, sources)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def check_consistent(db_path: Path, sources: dict[str, Path], tmp: Path) -> list[str]:
    with weightdb.connect(db_path, create=False) as db:
        names = [m.name for m in db.models()]
        assert set(names) <= set(sources)
        for name in names:
            out = tmp / f"{name}.out.safetensors"
            db.export_model(name, out)
            expected, got = load_file(sources[name]), load_file(out)
            assert expected.keys() == got.keys()
            assert all(expected[k].tobytes() == got[k].tobytes() for k in expected)
        assert db.verify() == db.stats()["pages"]
    return names


def test_sigkill_during_import_never_loses_or_half_imports_a_model(tmp_path):
    sources = make_sources(tmp_path)
    by_name = {p.stem: p for p in sources}
    start = time.perf_counter()
    full = run_importer(tmp_path / "timing-db", sources)
    assert full.wait(timeout=120) == 0, full.stderr.read().decode()
    duration = time.perf_counter() - start
    rng = random.Random(11)
    outcomes = set()
    for trial in range(TRIALS):
        db_path = tmp_path / f"db{trial}"
        process = run_importer(db_path, sources)
        time.sleep(rng.uniform(0, duration))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not (db_path / "config.toml").exists():
            outcomes.add("killed before the database existed")
            continue
        names = check_consistent(db_path, by_name, tmp_path)
        outcomes.add(len(names))
        # The next writer removes what the killed one left behind, and can import everything.
        with weightdb.connect(db_path) as db:
            for name, path in by_name.items():
                if name not in names:
                    db.import_model(path, name=name)
            referenced = {f for (f,) in db.store.catalog.conn.execute("SELECT file FROM pages")}
            on_disk = {f.name for f in (db_path / "pages").iterdir() if segment_number(f.name)}
            assert on_disk == referenced
        assert sorted(check_consistent(db_path, by_name, tmp_path)) == sorted(by_name)
    # The kills landed in different phases, not always before or after all the work.
    assert len(outcomes) >= 2, outcomes
