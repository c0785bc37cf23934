"""The benchmark harness: what every suite shares, so none gets the rules of BENCHMARKS.md subtly
different.

- Cold storage: caches are dropped with posix_fadvise(DONTNEED) for every system alike.
- Numbers: results are medians with min and max over repeats (``summary``, ``spread``), and
  comparisons are ratios (``ratio``).
- Output: every result file records the machine and library versions; reports are markdown
  tables (``markdown_table``) around prose templates (``string.Template``, ``render``).
- Memory: facts from psutil, a memory cgroup per system (``MemoryLimit``, cgroup v1: its limit
  binds RSS and page cache alike), and child processes run under a watchdog that kills one
  whose anonymous memory passes a cap or that runs too long (``run_watched``).
- Baselines: whole models kept LRU under a byte budget, as a user's own server would
  (``LRUModels``).
"""

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any

import psutil

from weightdb.memory_limit import MemoryLimit, ReadThrottle

RESULTS_DIR = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.05


# -- cold storage and timing ------------------------------------------------------------------


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> dict:
    """Run ``fn`` ``repeats`` times (``before`` untimed ahead of each); median, min, max seconds."""
    seconds = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return summary(seconds, with_runs=True)


# -- summary statistics and their formatting --------------------------------------------------


def summary(values: Sequence[float], with_runs: bool = False) -> dict:
    """Median, min and max (and with ``with_runs`` every value, as ``runs``): the only way a
    repeated measurement is quoted."""
    stats = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return {**stats, "runs": list(values)} if with_runs else stats


def spread(stat: dict | None, fmt: str = "{:.2f}", scale: float = 1.0, unit: str = "") -> str:
    """``median<unit> (min-max)``, each value times ``scale`` and formatted with ``fmt``."""
    if stat is None:
        return "-"
    median, low, high = (fmt.format(stat[key] * scale) for key in ("median", "min", "max"))
    return f"{median}{unit} ({low}-{high})"


def ratio(numerator: float | None, denominator: float | None, fmt: str = "{:.2f}x") -> str:
    """``numerator / denominator`` formatted, or ``-`` when either is missing or zero."""
    if not numerator or not denominator:
        return "-"
    return fmt.format(numerator / denominator)


def yes_no(flag: bool | None) -> str:
    """A floor's verdict as the reports print it."""
    return {True: "yes", False: "NO", None: "n/a at this size"}[flag]


# -- machine facts and output -----------------------------------------------------------------


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
        "memory_bytes": total_memory(),
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


def render(template: str, **values: object) -> str:
    """A report from a ``string.Template``; a placeholder left without a value is an error."""
    return Template(template).substitute(values).strip()


# -- memory: facts, a cgroup per system, watched child processes -----------------------------


def total_memory() -> int:
    return psutil.virtual_memory().total


def available_memory() -> int:
    """Bytes the kernel could give a new process without swapping (MemAvailable)."""
    return psutil.virtual_memory().available


def rss(pid: int | None = None) -> int:
    """Resident bytes of process ``pid`` (this one by default)."""
    return psutil.Process(pid).memory_info().rss


def anonymous_rss(pid: int) -> int:
    """Resident bytes not backed by a file (RSS less file and shared pages, which the kernel can
    drop; without swap the rest can only end in the OOM killer); 0 once the process is gone."""
    try:
        info = psutil.Process(pid).memory_info()
    except psutil.NoSuchProcess:
        return 0
    return info.rss - info.shared


RSS_HEADROOM = 2 << 30  # of MemAvailable at the start, left to the machine's other jobs


def watchdog_cap(ceiling: int | None = None) -> int:
    """The anonymous RSS a child may reach: ``ceiling``, or less so that RSS_HEADROOM of the
    memory available now stays with the machine's other jobs."""
    cap = available_memory() - RSS_HEADROOM
    return cap if ceiling is None else min(ceiling, cap)


def report_idle_and_wait(ready: Path) -> None:
    """Child side of the cgroup handshake: write this process's idle RSS to ``ready`` and wait
    for the parent's go (it sets the memory limit meanwhile, ``run_watched``)."""
    partial = ready.with_suffix(".partial")
    partial.write_text(json.dumps({"rss": rss()}))
    partial.replace(ready)  # the parent never reads a half-written file
    while not ready.with_suffix(".go").is_file():
        time.sleep(POLL_SECONDS)


@dataclass
class Watched:
    """How a watched child ended: why the watchdog killed it (or None), its resource usage, the
    largest anonymous RSS seen, wall seconds and, when it had one, its cgroup's figures."""

    returncode: int
    killed: str | None
    usage: resource.struct_rusage
    peak_anon_bytes: int
    wall_s: float
    cgroup: dict | None


def run_watched(
    command: list[str],
    name: str,
    env: dict[str, str],
    cap: int,
    timeout: float,
    memory_limit: int | None = None,
    ready: Path | None = None,
    disk: tuple[Path, int] | None = None,
) -> Watched:
    """Run ``command`` (child ``name``) from the repository, killing it if its anonymous RSS
    passes ``cap`` bytes or it runs past ``timeout`` seconds, so no system drives the machine
    into the OOM killer.

    With ``memory_limit``, the child runs in its own memory cgroup limited to ``memory_limit``
    plus the idle RSS it writes to ``ready`` (``report_idle_and_wait``) before it serves. With
    ``disk`` (a folder, bytes per second), its reads of the disk holding that folder are
    throttled to that rate (``ReadThrottle``)."""
    group = MemoryLimit(name) if memory_limit is not None else None
    throttle = ReadThrottle(name, *disk) if disk is not None else None
    joined = [cgroup.join for cgroup in (group, throttle) if cgroup is not None]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, preexec_fn=lambda: [join() for join in joined]
    )
    try:
        idle = _limit_when_idle(process, group, ready, memory_limit) if group and ready else None
        killed, usage, peak_anon = _watch(process, cap, timeout)
        cgroup = None
        if group:
            oom = group.oom_kills
            cgroup = {"limit_bytes": group.limit_bytes, "idle_rss_bytes": idle,
                      "peak_bytes": group.peak_bytes, "oom_kills": oom}  # fmt: skip
            if oom and killed is None:
                limit_mib = group.limit_bytes / 2**20
                killed = f"killed by the OOM killer at the cgroup's {limit_mib:.0f} MiB"
    finally:  # an error here must not leave the child waiting or the cgroup behind
        if process.returncode is None:
            process.kill()
            process.wait()
        if group:
            group.close()
        if throttle:
            throttle.close()
    wall = time.perf_counter() - start
    return Watched(process.returncode, killed, usage, peak_anon, wall, cgroup)


def _limit_when_idle(
    process: subprocess.Popen, group: MemoryLimit, ready: Path, budget: int
) -> int | None:
    """Wait for the child's idle RSS, set its cgroup's limit to it plus ``budget``, let it go."""
    while not ready.is_file():
        # WNOWAIT: an exited child stays unreaped, for _watch's wait4 and its resource usage
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            return None
        time.sleep(POLL_SECONDS)
    idle = json.loads(ready.read_text())["rss"]
    group.limit(budget + idle)
    ready.with_suffix(".go").touch()
    return idle


def _watch(
    process: subprocess.Popen, cap: int, timeout: float
) -> tuple[str | None, resource.struct_rusage, int]:
    """Wait for ``process``, killing it past ``cap`` anonymous bytes or ``timeout`` seconds;
    returns why it was killed (or None), its own resource usage, and the largest anonymous RSS
    seen (sampled every POLL_SECONDS)."""
    deadline = time.monotonic() + timeout
    killed, peak_anon = None, 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return killed, usage, peak_anon
        anon = anonymous_rss(process.pid)
        peak_anon = max(peak_anon, anon)
        if killed is None:
            if anon > cap:
                killed = (
                    f"killed by the watchdog: anonymous resident memory {anon / 2**30:.1f} GiB "
                    f"passed the {cap / 2**30:.1f} GiB cap"
                )
            elif time.monotonic() > deadline:
                killed = f"killed: still running after {timeout:.0f}s"
            if killed:
                process.kill()
        time.sleep(POLL_SECONDS)


# -- the LRU baseline -------------------------------------------------------------------------


class LRUModels:
    """Whole models kept while their bytes fit in ``budget``, as a user's server would keep them:
    on a miss the least recently used leave (``evicted(name)`` runs for each, e.g. to drop its
    files from the OS cache) before the model loads, so the next load finds their memory free."""

    def __init__(
        self,
        load: Callable[[str], Any],
        size_of: Callable[[str], int],
        budget: int,
        evicted: Callable[[str], None] | None = None,
    ) -> None:
        self.load, self.size_of, self.budget, self.evicted = load, size_of, budget, evicted
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.sizes: dict[str, int] = {}
        self.hits = self.loads = 0

    def get(self, name: str) -> Any:
        if name in self.models:
            self.models.move_to_end(name)
            self.hits += 1
            return self.models[name]
        size = self.size_of(name)
        while self.models and sum(self.sizes.values()) + size > self.budget:
            victim = next(iter(self.models))  # no reference to it may outlive the del
            del self.models[victim], self.sizes[victim]
            gc.collect()  # the evicted model's memory is free before the next one loads
            if self.evicted:
                self.evicted(victim)
        self.models[name] = self.load(name)
        self.sizes[name] = size
        self.loads += 1
        return self.models[name]
