"""The cgroup helpers of the benchmarks: the disk a read throttle caps, its knob, and the
cgroups a killed run leaves behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightdb.memory_limit import (
    ROOT,
    MemoryLimit,
    ReadThrottle,
    available,
    disk_of,
    throttle_available,
)


def test_the_throttled_disk_is_the_whole_disk_holding_the_folder(tmp_path):
    major, minor = disk_of(tmp_path)
    node = Path("/sys/dev/block") / f"{major}:{minor}"
    if not node.exists():
        pytest.skip("no block device behind this folder (e.g. a tmpfs)")
    assert not (node / "partition").exists()
    device = os.stat(tmp_path).st_dev
    own = Path("/sys/dev/block") / f"{os.major(device)}:{os.minor(device)}"
    assert own.resolve() == node.resolve() or own.resolve().parent == node.resolve()


@pytest.mark.skipif(
    not throttle_available(), reason="needs root and the cgroup v1 blkio controller"
)
def test_a_read_throttle_caps_its_disk_and_is_removed_on_close(tmp_path):
    with ReadThrottle("test", tmp_path, 250_000_000) as throttle:
        major, minor = disk_of(tmp_path)
        knob = (throttle.path / "blkio.throttle.read_bps_device").read_text().split()
        assert knob == [f"{major}:{minor}", "250000000"]
        assert throttle.bytes_read == 0
    assert not throttle.path.exists()


@pytest.mark.skipif(not available(), reason="needs root and the cgroup v1 memory controller")
def test_cgroups_left_by_a_killed_run_are_removed_by_the_next_one():
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    abandoned = ROOT / f"weightdb-killed-{gone}"
    ours = ROOT / f"weightdb-running-{os.getpid()}"  # its process is alive: kept
    abandoned.mkdir()
    ours.mkdir()
    try:
        with MemoryLimit("test") as limit:
            assert limit.path.exists()
            assert not abandoned.exists()
            assert ours.exists()
    finally:
        for path in (abandoned, ours):
            if path.exists():
                path.rmdir()
