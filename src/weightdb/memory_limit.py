"""Cgroups around a benchmarked system: one memory limit over its RSS and its page cache alike,
and a cap on how fast it reads storage.

A pool budget binds weightdb's buffer pool, but a baseline that memory-maps its files uses the
operating system's page cache, which no budget of its own bounds. The benchmarks and the demo
therefore run each system of an out-of-memory comparison in a cgroup (v1 memory controller,
writable as root) whose limit is the budget plus that process's idle RSS. The process joins the
cgroup as it starts (``join`` as its ``preexec_fn``), so everything it ever charges counts; the
limit is set once it has loaded its libraries and reported its idle RSS, before it reads any
weights. The kernel reclaims page cache inside the cgroup first, and kills the process (the OOM
killer, scoped to the cgroup) only when what it cannot reclaim passes the limit.

Whether decoding beats reading depends on the disk: this machine's reads a dropped cache at
several GB/s, a cloud volume at a few hundred MB/s. ``ReadThrottle`` (v1 blkio controller) caps
the bytes per second its processes read from one disk, buffered reads included (v1 charges a
page-cache miss to the task that reads), so a benchmark can serve at the bandwidths of other
disks. It caps an average, not every read: a cgroup that was idle may read a slice's worth
(100 ms of its bandwidth on a rotational disk) at once.

Tests never need this: only benchmarks and the demo create cgroups, and only when
``available()`` (``throttle_available()``).
"""

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")
BLKIO = Path("/sys/fs/cgroup/blkio")
PAGE = 4096  # limits are whole pages (the kernel refuses some other values)


def available() -> bool:
    """Whether this process may create memory cgroups (root, cgroup v1 memory controller)."""
    return os.geteuid() == 0 and os.access(ROOT / "cgroup.procs", os.W_OK)


def throttle_available() -> bool:
    """Whether this process may create blkio cgroups (root, cgroup v1 blkio controller)."""
    return os.geteuid() == 0 and os.access(BLKIO / "cgroup.procs", os.W_OK)


def _remove_abandoned(root: Path) -> None:
    """Remove our empty cgroups whose creating process is gone: a run killed before it could
    ``close`` them leaves them behind, one per system it was running."""
    for path in root.glob("weightdb-*-*"):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if not (path / "cgroup.procs").read_text().split():
                path.rmdir()
        except OSError:  # a process joined it meanwhile, or another sweep removed it
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


class _Cgroup:
    """A cgroup of one v1 controller (``root``), named after its use and this process."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        _remove_abandoned(root)
        self.path = root / f"weightdb-{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)

    def join(self) -> None:
        """Move the calling process into the cgroup (e.g. as a child's ``preexec_fn``)."""
        self._write("cgroup.procs", os.getpid())

    def _write(self, knob: str, value: object) -> None:
        (self.path / knob).write_text(str(value))

    def _read(self, knob: str) -> str:
        return (self.path / knob).read_text()

    def close(self) -> None:
        """Remove the cgroup (its processes have exited; leftovers move to the root)."""
        for pid in self._read("cgroup.procs").split():
            (self.root / "cgroup.procs").write_text(pid)
        self.path.rmdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryLimit(_Cgroup):
    """A memory cgroup, unlimited until ``limit``; processes ``join`` it, ``peak_bytes`` reads
    the most it held."""

    def __init__(self, name: str) -> None:
        super().__init__(ROOT, name)
        self.limit_bytes: int | None = None

    def limit(self, nbytes: int) -> None:
        """Limit the cgroup to ``nbytes`` from now on; the peak restarts from here, so it shows
        what the limited run held, not the libraries read while starting."""
        self.limit_bytes = -(-nbytes // PAGE) * PAGE
        self._write("memory.limit_in_bytes", self.limit_bytes)
        self._write("memory.max_usage_in_bytes", 0)

    @property
    def peak_bytes(self) -> int:
        """The most memory (RSS and page cache) the cgroup held at once."""
        return int(self._read("memory.max_usage_in_bytes"))

    @property
    def oom_kills(self) -> int:
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


class ReadThrottle(_Cgroup):
    """A blkio cgroup whose processes read the disk holding ``folder`` at ``bytes_per_s`` at
    most; processes ``join`` it."""

    def __init__(self, name: str, folder: Path, bytes_per_s: int) -> None:
        super().__init__(BLKIO, name)
        self.bytes_per_s = bytes_per_s
        major, minor = disk_of(folder)
        self._write("blkio.throttle.read_bps_device", f"{major}:{minor} {bytes_per_s}")

    @property
    def bytes_read(self) -> int:
        """Bytes the cgroup's processes have read from disks since it was made."""
        for line in self._read("blkio.throttle.io_service_bytes").splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] == "Read":
                return int(fields[2])
        return 0


def disk_of(path: Path) -> tuple[int, int]:
    """(major, minor) of the whole disk holding ``path``: a partition's disk, since the blkio
    throttle counts a disk's requests."""
    device = os.stat(path).st_dev
    node = Path("/sys/dev/block") / f"{os.major(device)}:{os.minor(device)}"
    if (node / "partition").is_file():
        node = node.resolve().parent
    major, minor = (node / "dev").read_text().split(":")
    return int(major), int(minor)


def drop_page_cache(path: Path) -> None:
    """Evict a file's (or every file's under a folder) pages from the OS page cache, so the
    next reader starts cold: what a memory limit is about."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages must reach the disk before they can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
