"""The cgroup helpers of the benchmarks: the disk a read throttle caps, and its knob."""

import os
from pathlib import Path

import pytest

from weightdb.memory_limit import ReadThrottle, disk_of, throttle_available


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
