"""The tour's serving section: one Zipf workload over a family, served by weightdb and by
PyTorch loading whole models on demand, each in its own process under the same memory limit.

With root and the cgroup v1 memory controller (``memory_limit.available()``) each process runs
in a memory cgroup limited to the budget plus its idle resident set, page cache included;
otherwise weightdb is bound by its pool budget and PyTorch by how many whole models its LRU
may hold, and the page cache by nothing. The demo says which.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightdb import memory_limit
from weightdb.caching.workload import request_sequence

SYSTEMS = ("weightdb", "pytorch")  # what weightdb.demo.serving_child can run
SKEW = 0.9  # Zipf exponent of model popularity, as in the benchmarks
POLL_SECONDS = 0.02
# One thread each: on a shared machine a second thread mostly waits for a core, and a
# multi-threaded kernel waits for its slowest thread (see weightdb.engine.threads).
THREADS = 1
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Served:
    """How one system served the sequence (``error`` set when it did not finish)."""

    system: str
    seconds: list[float]
    cold: list[bool]  # PyTorch: the request loaded its model; weightdb: the model's first
    limit_bytes: int | None
    error: str | None
    detail: dict

    @property
    def throughput(self) -> float:
        return len(self.seconds) / sum(self.seconds)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) * 1e3

    @property
    def cold_seconds(self) -> float:
        return sum(s for s, cold in zip(self.seconds, self.cold, strict=True) if cold)

    @property
    def warm_p50_ms(self) -> float | None:
        warm = [s for s, cold in zip(self.seconds, self.cold, strict=True) if not cold]
        return float(np.median(warm)) * 1e3 if warm else None


def serve_both(
    db_path: Path,
    family: dict,
    budget_bytes: int,
    requests: int,
    rows: int,
    work_dir: Path,
) -> dict[str, Served]:
    """Serve the same Zipf sequence with each system, storage cold before each."""
    models = [m["name"] for m in family["models"]]
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "db": str(db_path),
        "safetensors": {m["name"]: str(family["dir"] / m["safetensors"]) for m in family["models"]},
        "model_bytes": {m["name"]: m["bytes"] for m in family["models"]},
        "requests": str(family["dir"] / family["extra"]["requests"]),
        "sequence": request_sequence(models, requests, SKEW, seed=0),
        "rows_per_request": rows,
        "budget_bytes": budget_bytes,
        "out_dir": str(work_dir),
        "poll_seconds": POLL_SECONDS,
        "threads": THREADS,
    }
    config_path = work_dir / f"config-{budget_bytes}.json"
    config_path.write_text(json.dumps(config))
    results = {}
    for system in SYSTEMS:
        memory_limit.drop_page_cache(db_path / "pages")
        memory_limit.drop_page_cache(family["dir"] / "models")
        results[system] = _serve(system, config_path, work_dir, budget_bytes)
    return results


def _serve(system: str, config_path: Path, work_dir: Path, budget_bytes: int) -> Served:
    for suffix in (".ready", ".go", ".json", ".npy", ".partial"):
        (work_dir / system).with_suffix(suffix).unlink(missing_ok=True)
    group = memory_limit.MemoryLimit(f"demo-{system}") if memory_limit.available() else None
    command = [sys.executable, "-m", "weightdb.demo.serving_child", str(config_path), system]
    try:
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(THREADS))}
        process = subprocess.Popen(command, env=env, preexec_fn=group and group.join)
        ready = (work_dir / system).with_suffix(".ready")
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not ready.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if group is not None and ready.is_file():
            group.limit(budget_bytes + json.loads(ready.read_text())["rss"])
        ready.with_suffix(".go").touch()
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
            error = _failure(process.returncode, group)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            error = f"stopped: still serving after {TIMEOUT_SECONDS} s"
    finally:
        if group is not None:
            group.close()
    result_path = ready.with_suffix(".json")
    detail = json.loads(result_path.read_text()) if result_path.is_file() else {}
    seconds, cold = detail.pop("seconds", []), detail.pop("cold", [])
    if error is None and not seconds:
        error = "it served no request"
    limit = group.limit_bytes if group is not None else None
    return Served(system, seconds, cold[: len(seconds)], limit, error, detail)


def _failure(returncode: int, group: memory_limit.MemoryLimit | None) -> str | None:
    if group is not None and group.oom_kills:
        return f"killed by the OOM killer at its {group.limit_bytes / 2**20:.0f} MiB limit"
    if returncode != 0:
        return f"exited with code {returncode}"
    return None


def first_answers_differ(work_dir: Path) -> float | None:
    """Largest absolute difference between the systems' answers to the first request."""
    answers = [(work_dir / s).with_suffix(".npy") for s in SYSTEMS]
    if not all(a.is_file() for a in answers):
        return None
    first, second = (np.load(a) for a in answers)
    return float(np.abs(first - second).max())
