"""What every benchmark suite shares: cold storage, repeated timing, machine facts, output.

Rules from BENCHMARKS.md live here so each suite cannot get them subtly different: caches are
dropped with posix_fadvise(DONTNEED) for every system alike, results are medians with min and
max over repeats, and every result file records the machine and library versions.
"""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def drop_cache(path: Path) -> None:
    """Evict a file's (or every file's under a folder) pages from the OS page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages must reach the disk before they can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> dict:
    """Run ``fn`` ``repeats`` times (``before`` untimed ahead of each); median, min, max seconds."""
    seconds = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "runs": seconds,
    }


def machine() -> dict:
    versions = {}
    for package in ("weightdb", "numpy", "torch", "onnxruntime", "duckdb", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "versions": versions,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(out_dir: Path, suite: str, results: dict, markdown: str) -> None:
    """Save ``<suite>.json`` (with machine facts) and ``<suite>.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"suite": suite, "machine": machine(), **results}
    (out_dir / f"{suite}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    (out_dir / f"{suite}.md").write_text(markdown.rstrip() + "\n")


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
