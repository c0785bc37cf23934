"""Writes that cannot proceed fail with the error that names the fix and commit nothing: a
second writer holding the writer lock, and a filesystem that fills up mid-import."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import weightdb
from weightdb.errors import ConcurrentWriteError

SMALL = np.ones((64, 64), np.float32)
BIG = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)  # 1 MiB

HOLD_THE_WRITER_LOCK = textwrap.dedent(
    """
    import sys
    import weightdb
    with weightdb.connect(sys.argv[1], create=False) as db, db.store.writer_lock:
        print("holding", flush=True)
        sys.stdin.readline()
    """
)


def test_a_second_writer_waits_for_the_lock_then_gives_up_clearly(tmp_path: Path):
    path = tmp_path / "db"
    with weightdb.connect(path) as db:
        db.import_arrays("first", {"w": SMALL})
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_WRITER_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with weightdb.connect(path, create=False) as db:
            db.store.writer_lock.timeout = 0.2  # seconds to wait before giving up (60 by default)
            expected = f"another process has been writing to {path} for 0.2s; wait for it"
            with pytest.raises(ConcurrentWriteError, match=re.escape(expected)):
                db.import_arrays("second", {"w": SMALL * 2})
            assert [model.name for model in db.models()] == ["first"]
            holder.communicate("done\n", timeout=30)
            db.import_arrays("second", {"w": SMALL * 2})  # the lock is free again
            assert [model.name for model in db.models()] == ["first", "second"]
    finally:
        holder.kill()
        holder.wait()


IMPORT_ON_A_SMALL_FILESYSTEM = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import weightdb
    path, small, big = sys.argv[1], np.ones((64, 64), np.float32), np.load(sys.argv[2])
    with weightdb.connect(path) as db:
        db.import_arrays("small", {"w": small})
        try:
            db.import_arrays("big", {"w": big})
            error = None
        except Exception as exc:
            error = [type(exc).__name__, str(exc)]
    with weightdb.connect(path, create=False) as db:
        models = [model.name for model in db.models()]
        db.verify()
    print(json.dumps({"error": error, "models": models}))
    """
)


def test_a_full_filesystem_is_a_storage_full_error_and_commits_nothing(tmp_path: Path):
    """The database lives on a 600 KiB tmpfs, mounted in a private mount namespace (root is
    mapped into a new user namespace, so no privileges are needed), and a 1 MiB model does not
    fit on it."""
    unshare = shutil.which("unshare")
    mount = tmp_path / "small-fs"
    mount.mkdir()
    np.save(tmp_path / "big.npy", BIG)
    probe = ["--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", str(mount)]
    if unshare is None or subprocess.run([unshare, *probe], capture_output=True).returncode:
        pytest.skip("this kernel does not allow a private mount namespace (unshare)")
    script = (
        f"mount -t tmpfs -o size=600k tmpfs {mount} && "
        f'exec "$0" -c "$1" {mount / "db"} {tmp_path / "big.npy"}'
    )
    command = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script]
    child = subprocess.run(
        [*command, sys.executable, IMPORT_ON_A_SMALL_FILESYSTEM],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["models"] == ["small"]  # nothing of "big" was committed, and verify passed
    name, message = report["error"]
    assert name == "StorageFullError", f"{name}: {message}"
    assert "\n" not in message and str(mount / "db") in message
