"""Read-only opening: readers in other processes keep a consistent snapshot while a writer
imports, removes and repacks, never lose a page they may read, and see the changes after
``refresh``."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import weightdb
from weightdb.errors import DatabaseNotFoundError, ReadOnlyError
from weightdb.storage.settings import Settings

SMALL = Settings(block_rows=16, block_cols=8, page_size=8192)

READER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import weightdb

    path, folder = Path(sys.argv[1]), Path(sys.argv[2])
    x = np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100)
    with weightdb.connect(path, read_only=True, budget="64KiB") as db:
        np.save(folder / "before.npy", db.predict("mlp", {"x": x})["output"])
        (folder / "models-before.txt").write_text(",".join(m.name for m in db.models()))
        (folder / "ready").touch()
        while not (path.parent / "written").exists():
            time.sleep(0.05)
        # The writer has repacked, removed a model and collected garbage: the snapshot still
        # reads its own pages (a 64 KiB pool cannot have kept them), and sees no change.
        db.pool.clear()
        np.save(folder / "during.npy", db.predict("mlp", {"x": x})["output"])
        (folder / "models-during.txt").write_text(",".join(m.name for m in db.models()))
        db.refresh()
        np.save(folder / "after.npy", db.predict("mlp", {"x": x})["output"])
        (folder / "models-after.txt").write_text(",".join(m.name for m in db.models()))
    """
)

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import weightdb
    from weightdb.storage import store

    path = sys.argv[1]
    store.RETIRED_GRACE_SECONDS = 0.0  # only the readers' leases keep retired pages
    with weightdb.connect(path, create=False) as db:
        db.import_arrays("new", {"w": np.arange(640, dtype=np.float32).reshape(40, 16)})
        db.remove_model("extra")
        db.pack(force=True)
        with db.store.writer_lock:
            db.store.collect_garbage()
    """
)


def _run(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)])


def _wait_for(paths: list[Path], processes: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert all(p.poll() is None for p in processes), "a reader exited early"
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.05)


def test_readers_keep_their_snapshot_under_a_writer(tmp_path, exported_models):
    path = tmp_path / "db"
    with weightdb.connect(path, settings=SMALL) as db:
        db.import_model(exported_models["mlp"], "mlp")
        db.import_arrays("extra", {"w": np.ones((64, 64), np.float32)})
        x = np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100)
        expected = db.predict("mlp", {"x": x})["output"]
    folders = [tmp_path / f"reader{i}" for i in (1, 2)]
    for folder in folders:
        folder.mkdir()
    readers = [_run(READER, path, folder) for folder in folders]
    try:
        _wait_for([f / "ready" for f in folders], readers)
        pages_before = {f.name for f in (path / "pages").iterdir()}
        assert _run(WRITER, path).wait(timeout=300) == 0
        # Both readers still hold leases on the old layout: its files are all still there.
        assert pages_before <= {f.name for f in (path / "pages").iterdir()}
        (tmp_path / "written").touch()
        assert [r.wait(timeout=300) for r in readers] == [0, 0]
    finally:
        for reader in readers:
            reader.kill()
    for folder in folders:
        for when in ("before", "during", "after"):
            assert np.load(folder / f"{when}.npy").tobytes() == expected.tobytes(), when
        assert (folder / "models-before.txt").read_text() == "extra,mlp"
        assert (folder / "models-during.txt").read_text() == "extra,mlp"
        assert (folder / "models-after.txt").read_text() == "mlp,new"
    # The readers are gone and so are their leases: the next writer frees the old files.
    from weightdb.storage import store

    grace = store.RETIRED_GRACE_SECONDS
    store.RETIRED_GRACE_SECONDS = 0.0
    try:
        with weightdb.connect(path, create=False) as db, db.store.writer_lock:
            removed = db.store.collect_garbage()
            assert pages_before <= set(removed)  # the forced repack rewrote every page
            assert db.verify() == db.stats()["pages"]
    finally:
        store.RETIRED_GRACE_SECONDS = grace


def test_a_read_only_database_refuses_writes(tmp_path, rng):
    path = tmp_path / "db"
    with weightdb.connect(path, settings=SMALL) as db:
        db.import_arrays("m", {"w": rng.standard_normal((20, 20)).astype(np.float32)})
    with weightdb.connect(path, read_only=True) as db:
        for write in (
            lambda: db.import_arrays("n", {"w": np.zeros((2, 2), np.float32)}),
            lambda: db.remove_model("m"),
            lambda: db.pack(force=True),
            lambda: db.compress(),
            lambda: db.deduplicate(),
        ):
            with pytest.raises(ReadOnlyError, match="is open read-only; open it without"):
                write()
        assert [m.name for m in db.models()] == ["m"]
    with pytest.raises(DatabaseNotFoundError, match="no weightdb database"):
        weightdb.connect(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()
