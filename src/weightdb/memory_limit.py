"""A memory cgroup per benchmarked system: one limit over its RSS and its page cache alike.

A pool budget binds weightdb's buffer pool, but a baseline that memory-maps its files uses the
operating system's page cache, which no budget of its own bounds. The benchmarks and the demo
therefore run each system of an out-of-memory comparison in a cgroup (v1 memory controller,
writable as root) whose limit is the budget plus that process's idle RSS. The process joins the
cgroup as it starts (``join`` as its ``preexec_fn``), so everything it ever charges counts; the
limit is set once it has loaded its libraries and reported its idle RSS, before it reads any
weights. The kernel reclaims page cache inside the cgroup first, and kills the process (the OOM
killer, scoped to the cgroup) only when what it cannot reclaim passes the limit.

Tests never need this: only benchmarks and the demo create cgroups, and only when
``available()``.
"""

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")
PAGE = 4096  # limits are whole pages (the kernel refuses some other values)


def available() -> bool:
    """Whether this process may create memory cgroups (root, cgroup v1 memory controller)."""
    return os.geteuid() == 0 and os.access(ROOT / "cgroup.procs", os.W_OK)


class MemoryLimit:
    """A memory cgroup, unlimited until ``limit``; processes ``join`` it, ``peak_bytes`` reads
    the most it held."""

    def __init__(self, name: str) -> None:
        self.path = ROOT / f"weightdb-{name}-{os.getpid()}"
        self.limit_bytes: int | None = None
        self.path.mkdir(exist_ok=True)

    def limit(self, nbytes: int) -> None:
        """Limit the cgroup to ``nbytes`` from now on; the peak restarts from here, so it shows
        what the limited run held, not the libraries read while starting."""
        self.limit_bytes = -(-nbytes // PAGE) * PAGE
        self._write("memory.limit_in_bytes", self.limit_bytes)
        self._write("memory.max_usage_in_bytes", 0)

    def join(self) -> None:
        """Move the calling process into the cgroup (e.g. as a child's ``preexec_fn``)."""
        self._write("cgroup.procs", os.getpid())

    def _write(self, knob: str, value: int) -> None:
        (self.path / knob).write_text(str(value))

    def _read(self, knob: str) -> str:
        return (self.path / knob).read_text()

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

    def close(self) -> None:
        """Remove the cgroup (its processes have exited; leftovers move to the root)."""
        for pid in self._read("cgroup.procs").split():
            (ROOT / "cgroup.procs").write_text(pid)
        self.path.rmdir()

    def __enter__(self) -> "MemoryLimit":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
