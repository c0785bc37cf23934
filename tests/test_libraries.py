"""Contracts kept where a library replaced hand-written code: the writer lock (filelock),
config.toml (tomli-w), and the demo's wait for its server."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from weightdb.demo import query
from weightdb.errors import ConcurrentWriteError, WeightDBError
from weightdb.storage.settings import Settings, read_settings, write_settings
from weightdb.storage.writer_lock import WriterLock

HOLD = """
import sys, time
from pathlib import Path
from weightdb.storage.writer_lock import WriterLock
lock = WriterLock(Path(sys.argv[1]))
lock.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_writer_times_out_naming_the_database(tmp_path: Path) -> None:
    lock = tmp_path / "writer.lock"
    held, other = WriterLock(lock), WriterLock(lock, timeout=0.2)  # other: another connection
    with held, held, pytest.raises(ConcurrentWriteError) as caught, other:  # nested: re-entered
        pass
    assert str(caught.value) == (
        f"another process has been writing to {tmp_path} for 0.2s; wait for it to finish and retry"
    )
    assert lock.exists()  # left in place, so waiters always lock the same file
    with WriterLock(lock, timeout=0.2):  # released by the outer exit
        pass


def test_threads_of_one_process_share_the_hold(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "writer.lock", timeout=0.2)
    entered = []
    with lock:
        worker = threading.Thread(target=lambda: entered.append(lock.__enter__() is lock))
        worker.start()
        worker.join()
        lock.__exit__()
    assert entered == [True]


def test_the_lock_is_released_when_its_process_dies(tmp_path: Path) -> None:
    lock = tmp_path / "writer.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConcurrentWriteError), WriterLock(lock, timeout=0.2):
            pass
    finally:
        holder.kill()
        holder.wait()
    with WriterLock(lock, timeout=5):
        pass


def test_settings_round_trip_through_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    settings = Settings(block_rows=64, block_cols=32, policy="netsdb-cost", lossless=True)
    write_settings(path, settings)
    assert read_settings(path) == settings
    assert path.read_text().splitlines()[:2] == [
        "# weightdb database settings; fixed at creation.",
        "block_rows = 64",
    ]
    assert 'policy = "netsdb-cost"' in path.read_text().splitlines()


class _NeverStarted:
    started = False


def test_the_demo_fails_clearly_when_its_server_stops_before_serving() -> None:
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    with pytest.raises(WeightDBError, match=r"127\.0\.0\.1:8 stopped before it served"):
        query.wait_until_started(_NeverStarted(), dead, 8)


def test_the_demo_gives_up_waiting_for_its_server(monkeypatch) -> None:
    monkeypatch.setattr(query, "SERVER_START_SECONDS", 0.0)
    stop = threading.Event()
    alive = threading.Thread(target=stop.wait)
    alive.start()
    try:
        with pytest.raises(WeightDBError, match=r"did not start within 0s"):
            query.wait_until_started(_NeverStarted(), alive, 8)
    finally:
        stop.set()
        alive.join()
