"""The CLI contract other tools rely on: commands, --db / WEIGHTDB_DB, JSON, exit codes."""

import ctypes
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import weightdb
from weightdb.units import format_size

WEIGHTDB = [sys.executable, "-m", "weightdb"]
IN_OPEN = 0x20  # inotify: the file was opened


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*WEIGHTDB, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((100, 70)).astype(np.float32), "b": np.ones(70)}, path)
    return path


def test_init_import_export_ls_stats(tmp_path, model_file):
    db = str(tmp_path / "db")
    assert cli("init", db, "--block-shape", "32,16", "--page-size", "64KiB").returncode == 0
    assert cli("--db", db, "import", str(model_file), "--name", "m1").returncode == 0
    result = cli("import", str(model_file), "--name", "m2", env={"WEIGHTDB_DB": db})
    assert result.returncode == 0 and result.stderr == ""  # no stray empty line
    out = tmp_path / "out.safetensors"
    exported = cli("--db", db, "export", "m2", "-o", str(out))
    assert exported.returncode == 0 and exported.stderr == ""
    original, exported = load_file(model_file), load_file(out)
    assert all(original[k].tobytes() == exported[k].tobytes() for k in original)

    listing = json.loads(cli("--db", db, "ls", "--json").stdout)
    assert [m["name"] for m in listing] == ["m1", "m2"]
    stats = json.loads(cli("--db", db, "stats", "--json").stdout)
    model_bytes = 100 * 70 * 4 + 70 * 8
    assert stats["models"] == 2 and stats["tensors"] == 4
    assert stats["logical_bytes"] == 2 * model_bytes
    assert stats["stored_bytes"] == model_bytes
    assert stats["distinct_blocks"] == 4 * 5 + 1  # 100x70 in 32x16 blocks; the bias fits one
    assert stats["pages"] >= 1 and stats["page_file_bytes"] >= stats["stored_bytes"]
    assert stats["block_shape"] == [32, 16] and stats["page_size"] == 64 * 1024

    table = cli("--db", db, "stats")
    assert "stored_bytes" in table.stdout and table.returncode == 0
    verified = cli("--db", db, "verify")
    assert verified.returncode == 0 and verified.stderr == ""
    assert cli("--db", db, "rm", "m1").returncode == 0
    assert [m["name"] for m in json.loads(cli("--db", db, "ls", "--json").stdout)] == ["m2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ls"], "no database given"),
        (["--db", "{tmp}/missing", "ls"], "weightdb init"),
        (["--db", "{db}", "export", "nope", "-o", "{tmp}/x.safetensors"], "no model named 'nope'"),
        (["--db", "{db}", "import", "{tmp}/nothing.safetensors", "--name", "x"], "does not exist"),
        (["--db", "{db}", "import", "{model}", "--name", "bad/name"], "not allowed"),
        (["init", "{tmp}/other", "--page-size", "lots"], "cannot read size"),
        (["init", "{tmp}/other", "--block-shape", "3"], "R,C"),
        (["init", "{tmp}/other", "--block-shape", "512,512", "--page-size", "1MiB"], "cannot hold"),
    ],
)
def test_errors_go_to_stderr_with_a_non_zero_exit(tmp_path, model_file, args, message):
    db = tmp_path / "db"
    assert cli("init", str(db)).returncode == 0
    filled = [a.format(tmp=tmp_path, db=db, model=model_file) for a in args]
    result = cli(*filled, env={"WEIGHTDB_DB": ""})
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_runs_the_checkouts_suites_and_names_the_valid_ones() -> None:
    result = cli("bench", "--quick", "no-such-suite")
    assert result.returncode == 2
    assert "unknown suites ['no-such-suite']" in result.stderr
    assert "'dedup'" in result.stderr and "'budgets'" in result.stderr


@contextmanager
def _opens_of(path: Path) -> Iterator[Callable[[float], bool]]:
    """Watch ``path`` with inotify; the callable waits up to the given seconds and says whether
    some process opened it since the watch began (a writer reopens the lock at every try)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN) >= 0
    try:
        yield lambda seconds: bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


def test_import_that_waited_for_the_lock_reports_only_its_own_blocks(tmp_path, model_file):
    """Another writer commits while this import waits for the writer lock: the summary counts
    only the blocks this import stored."""
    db_path = tmp_path / "db"
    rng = np.random.default_rng(1)
    other = tmp_path / "other.safetensors"
    save_file({"v": rng.standard_normal((300, 40)).astype(np.float32)}, other)
    with (
        weightdb.connect(db_path) as db,
        db.store.writer_lock,
        _opens_of(db_path / "writer.lock") as opened,
    ):
        waiting = subprocess.Popen(
            [*WEIGHTDB, "--db", str(db_path), "import", str(model_file), "--name", "mine"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        deadline = time.monotonic() + 60
        while not opened(0.05):  # the import tries the lock, and will again until it is free
            assert time.monotonic() < deadline and waiting.poll() is None, "import never waited"
        db.import_model(other, "other")  # commits while the import above waits
        before = db.stats()["stored_bytes"]
    out, _ = waiting.communicate(timeout=120)
    with weightdb.connect(db_path, create=False) as db:
        added = db.stats()["stored_bytes"] - before
    assert waiting.returncode == 0
    assert f"; {format_size(added)} of new blocks stored" in out
    assert before > 0  # blocks of the other model, which the summary must not count


def test_old_spellings_work_for_one_release_with_a_warning(tmp_path, model_file):
    db = str(tmp_path / "db")
    assert cli("init", db).returncode == 0
    assert cli("--db", db, "import", str(model_file), "--name", "m").returncode == 0
    out = tmp_path / "old.safetensors"
    exported = cli("--db", db, "export", "m", str(out))
    assert exported.returncode == 0 and out.is_file()
    assert exported.stderr == (
        "warning: `export NAME FILE` is deprecated and goes in the next release; use "
        "`export NAME --output FILE`\n"
    )
    query = cli("--db", db, "sql", "SELECT 42 AS answer", "--budget", "64MiB", "--json")
    assert json.loads(query.stdout) == [{"answer": 42}]
    assert query.stderr == (
        "warning: --budget is deprecated and goes in the next release; use --memory\n"
    )
    both = cli("--db", db, "export", "m", str(out), "-o", str(out))
    assert both.returncode == 2 and "give the file to write once" in both.stderr
