"""Scale: models that together exceed the machine's memory, served under a budget of a few GiB.

    python -m benchmarks.run scale           # 28 GiB of models, ~35 GB of disk: 11 min, 4 cached
    python -m benchmarks.run --quick scale   # 2 GiB of models, a couple of minutes

The ``scale`` zoo family at full width (built once and cached beside ``benchmarks.families``'
builds): 16 variants of an embedding-bag MLP (a ~430k x 1024 embedding, mean over tokens, a
1024-4096-4096-1000 MLP), the base and fifteen that each change ~10% of its 256x256 blocks;
1.75 GiB per model and 28 GiB in all, more than this machine's 23.5 GiB of memory. weightdb
imports the ONNX files (its exact deduplication stores each shared block once; import time and
stored bytes are reported). Why not the zoo's default of 8 models of 4 GiB: 32 GiB would take
~40 GB of disk with the database (1.2 GB per GiB of models), more than this shared machine can
spare. (The first attempt also found that ONNX import failed above 2 GiB; it maps external
data since.) A Zipf(0.9)
sequence of requests over the 16 models, each one batch of the family's request inputs (256
rows of 16 token ids), is served by every system in its own process, under one memory budget B
(4 GiB: two models fit, three do not):

- weightdb: ``weightdb.connect(db, budget=B)`` and ``db.predict`` per request.
- onnxruntime: an InferenceSession per model from its ONNX file, kept while the sessions' files
  fit in B; the least recently used leave (their files dropped from the OS cache) before a miss
  loads its model. onnxruntime maps external data rather than copying it: a session's memory
  holds the weights it prepacks (the MLP's) and the embedding pages requests touch, though a
  load still reads the whole file from storage (into the OS page cache).
- pytorch: the same with an nn.Module per model holding every weight of its safetensors file in
  memory (as ``load_state_dict`` into a constructed module does).
- safetensors-mmap: every model's safetensors file memory-mapped, numpy forward; the operating
  system is the cache (pages of a mapped file are not dropped, so B does not bind it).
- onnxruntime-all and pytorch-all, "load everything": every model loaded at once, then the
  requests. pytorch-all needs all 28 GiB in memory; onnxruntime-all maps them.

A watchdog kills any system whose anonymous resident memory (what the kernel cannot reclaim
without swap, which this machine lacks) passes a cap: 20 GiB at full size, lowered to leave 2 GiB
of the memory available at the start to the machine's other jobs. Such a system fails with the
reason and never drives the machine into the OOM killer.

Storage is cold for everyone: every model file and database page leaves the OS page cache
(posix_fadvise DONTNEED) before each system starts; the LRU baselines drop a model's files when
it leaves their cache, and weightdb's pages folder is dropped before every request (untimed), so
whatever is not in a system's own memory is read from storage. Per system: success or the error,
per-request latency (median, min-max; a model load on a miss counts in its request), setup and
total seconds, bytes read from storage (the child's rusage block input: read() calls and page
faults of mapped files alike), peak RSS (the child's ru_maxrss from wait4, which counts mapped
file pages), peak anonymous RSS (sampled every 50 ms) and RSS after setup. Outputs agree with
onnxruntime's on the first request (max abs difference). One run per system, in the order of
SYSTEMS, with the 1-minute load average before each.
"""

import argparse
import gc
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchmarks.common import RESULTS_DIR, drop_cache, markdown_table, write_results
from weightdb.memory_limit import MemoryLimit

SYSTEMS = (
    "weightdb", "onnxruntime", "pytorch", "safetensors-mmap", "onnxruntime-all", "pytorch-all"
)  # fmt: skip
SKEW = 0.9
MODES = {  # family total and models, requests, budget B, watchdog cap, seconds per system
    "full": {"total": "28GiB", "models": 16, "requests": 32, "budget": 4 << 30,
             "rss_cap": 20 << 30, "timeout": 3600.0},
    "quick": {"total": "2GiB", "models": 16, "requests": 16, "budget": 256 << 20,
              "rss_cap": 2 << 30, "timeout": 600.0},
}  # fmt: skip
RSS_HEADROOM = 2 << 30  # of MemAvailable at the start, left to other jobs
POLL_SECONDS = 0.05
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
Predict = Callable[[str, dict[str, np.ndarray]], np.ndarray]


# -- the parent: build, import, run each system in a watched child, report ---------------------


class _Printer:
    """Zoo build progress: a line per tenth of each tensor's bands (a full build takes minutes)."""

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        step, start = max(1, total // 10), time.perf_counter()
        for k, item in enumerate(items, 1):
            yield item
            if k % step == 0 or k == total:
                print(f"  {label}: {k}/{total} ({time.perf_counter() - start:.0f}s)", flush=True)


def scale_family(total: str, models: int):
    """The scale family at full width, ``total`` bytes in ``models`` models, built now unless a
    build is cached (like ``families.family``, which builds a size's defaults only); with the
    seconds the build took."""
    from benchmarks.families import BENCH_DIR, Family
    from weightdb.zoo.build import build_family
    from weightdb.zoo.manifest import MANIFEST_NAME

    size = f"full-{total}-x{models}"
    folder = BENCH_DIR / "zoo" / f"scale-{size}"
    timing = folder.with_name(folder.name + ".build.json")
    if not (folder / MANIFEST_NAME).is_file():
        print(f"  building scale/full --total {total} --models {models} into {folder}", flush=True)
        start = time.perf_counter()
        options = {"total": total, "models": models}
        build_family("scale", folder, "full", seed=0, options=options, reporter=_Printer())
        timing.write_text(json.dumps({"build_seconds": time.perf_counter() - start}))
    seconds = json.loads(timing.read_text())["build_seconds"] if timing.is_file() else None
    return Family("scale", size, folder / MANIFEST_NAME), seconds


def run(quick: bool, out_dir: Path) -> dict:
    from benchmarks.families import database, isolated
    from weightdb.caching.workload import request_sequence
    from weightdb.zoo.families.scale import REQUEST_ROWS, REQUEST_TOKENS

    mode = MODES["quick" if quick else "full"]
    fam, build_seconds = scale_family(mode["total"], mode["models"])
    models_dir = fam.manifest_path.parent / "models"
    print(f"  importing {fam.label} into weightdb (cached once done)", flush=True)
    db_path, imported = isolated(database, fam, "exact")
    entries = {m["name"]: m for m in fam.manifest["models"]}
    family_bytes = sum(m["bytes"] for m in entries.values())
    sequence = request_sequence(fam.models, mode["requests"], SKEW, seed=0)
    cap = min(mode["rss_cap"], meminfo("MemAvailable") - RSS_HEADROOM)
    results: dict[str, Any] = {
        "quick": quick,
        "family": fam.label,
        "description": fam.manifest["description"],
        "models": fam.models,
        "model_bytes": {name: m["bytes"] for name, m in entries.items()},
        "family_bytes": family_bytes,
        "build_seconds": build_seconds,
        "import": imported,
        "memory_bytes": meminfo("MemTotal"),
        "mem_available_bytes": meminfo("MemAvailable"),
        "budget_bytes": mode["budget"],
        "rss_cap_bytes": cap,
        "skew": SKEW,
        "request_rows": REQUEST_ROWS,
        "request_tokens": REQUEST_TOKENS,
        "sequence": sequence,
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="weightdb-scale-") as tmp:
        config_path = write_config(fam, db_path, sequence, mode["budget"], Path(tmp))
        for system in SYSTEMS:
            print(f"  {system}: {len(sequence)} requests, budget {mode['budget'] >> 20} MiB, "
                  f"RSS cap {cap / 2**30:.1f} GiB", flush=True)  # fmt: skip
            drop_cache(models_dir)  # cold storage for every system at its start
            drop_cache(db_path)
            outcome = serve_system(system, config_path, cap, mode["timeout"])
            results["systems"][system] = outcome
            print(f"  {system}: {_outcome(outcome)}, {outcome['total_s']:.0f}s, "
                  f"{outcome['storage_read_bytes'] / 2**30:.2f} GiB read, peak RSS "
                  f"{outcome['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
        results["max_abs_difference_vs_onnxruntime"] = _agreement(Path(tmp))
    write_results(out_dir, "scale", results, _markdown(results))
    _plot(results, out_dir / "scale.png")
    return results


def write_config(fam, db_path: Path, sequence: list[str], budget: int, folder: Path) -> Path:
    """The children's config for serving ``sequence`` under ``budget``; they write their
    results beside it, in ``folder``."""
    from weightdb.zoo.families.scale import INPUT

    config = {
        "db": str(db_path),
        "models": {
            m["name"]: {k: str(fam.manifest_path.parent / m[k]) for k in ("onnx", "safetensors")}
            for m in fam.manifest["models"]
        },
        "requests": str(fam.manifest_path.parent / fam.manifest["extra"]["requests"]),
        "input": INPUT,
        "sequence": sequence,
        "budget": budget,
        "tmp": str(folder),
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def serve_system(
    system: str, config_path: Path, cap: int, timeout: float, memory_limit: int | None = None
) -> dict:
    """Run ``system`` over the sequence in a child process, watched for memory and time.

    With ``memory_limit``, the child runs in its own memory cgroup (``memory_limit``) limited to
    ``memory_limit`` plus its idle RSS, which it reports once set up and before it serves."""
    from benchmarks.engine import THREADS

    load = os.getloadavg()[0]
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(THREADS))}
    command = [sys.executable, "-m", "benchmarks.scale", "child", str(config_path), system]
    group = MemoryLimit(system) if memory_limit is not None else None
    if group:
        command.append("--handshake")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, preexec_fn=group and group.join)
    idle_rss = _limit_when_idle(process, group, config_path, system, memory_limit)
    killed, usage, peak_anon = _watch(process, cap, timeout)
    wall = time.perf_counter() - start
    cgroup = None
    if group:
        oom = group.oom_kills
        cgroup = {"limit_bytes": group.limit_bytes, "idle_rss_bytes": idle_rss,
                  "peak_bytes": group.peak_bytes, "oom_kills": oom}  # fmt: skip
        group.close()
        if oom and killed is None:
            killed = f"killed by the OOM killer at the cgroup's {group.limit_bytes / 2**20:.0f} MiB"
    result_path = config_path.parent / f"{system}.json"
    record = json.loads(result_path.read_text()) if result_path.is_file() else {}
    requests = len(json.loads(config_path.read_text())["sequence"])
    seconds = [r["seconds"] for r in record.get("requests", [])]
    error = killed or record.get("error")
    if error is None and process.returncode != 0:
        error = f"exit code {process.returncode}"
    if error is None and len(seconds) < requests:
        error = f"served {len(seconds)} of {requests} requests"
    latency = (
        {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}
        if seconds
        else None
    )
    return {
        "ok": error is None,
        "error": error,
        "requests_done": len(seconds),
        "latency_s": latency,
        "request_seconds": seconds,
        "setup_s": record.get("setup_seconds"),
        "total_s": record.get("seconds", wall) if not killed else wall,
        "wall_s": wall,
        "storage_read_bytes": usage.ru_inblock * 512,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_anon_bytes": peak_anon,
        "rss_after_setup_bytes": record.get("rss_after_setup"),
        "loads": record.get("loads", 0),
        "hits": record.get("hits", 0),
        "loaded_models": record.get("loaded_models"),
        "pool": record.get("pool"),
        "load_before": load,
        "cgroup": cgroup,
    }


def _limit_when_idle(
    process: subprocess.Popen,
    group: MemoryLimit | None,
    config_path: Path,
    system: str,
    budget: int | None,
) -> int | None:
    """Wait for the child's idle RSS, set its cgroup's limit to it plus ``budget``, let it go."""
    if group is None or budget is None:
        return None
    ready = config_path.parent / f"{system}.ready"
    while not ready.is_file():
        if process.poll() is not None:
            return None
        time.sleep(POLL_SECONDS)
    idle = json.loads(ready.read_text())["rss"]
    group.limit(budget + idle)
    ready.with_suffix(".go").touch()
    return idle


def _watch(process: subprocess.Popen, cap: int, timeout: float) -> tuple[str | None, Any, int]:
    """Wait for ``process``, killing it if its anonymous resident memory (RSS less the pages of
    mapped files, which the kernel can drop; without swap the rest can only end in the OOM
    killer) passes ``cap`` bytes or it runs past ``timeout``; returns why it was killed (or
    None), its own resource usage, and the largest anonymous RSS seen (sampled)."""
    deadline = time.monotonic() + timeout
    killed, peak_anon = None, 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return killed, usage, peak_anon
        anon = _status_bytes(process.pid, "RssAnon")
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


def _agreement(tmp: Path) -> dict[str, float | None]:
    """Max abs difference of each system's first answer from onnxruntime's (None if missing)."""
    reference = tmp / "onnxruntime.npy"
    if not reference.is_file():
        return dict.fromkeys(SYSTEMS)
    expected = np.load(reference)
    return {
        system: float(np.abs(np.load(tmp / f"{system}.npy") - expected).max())
        if (tmp / f"{system}.npy").is_file()
        else None
        for system in SYSTEMS
    }


def meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _status_bytes(pid: int | str, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status in bytes (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _outcome(outcome: dict) -> str:
    return "ok" if outcome["ok"] else f"FAILED ({outcome['error']})"


def _gib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**30:.2f}"


def _markdown(results: dict) -> str:
    systems = results["systems"]
    ours = systems["weightdb"]
    rows = []
    for name, s in systems.items():
        latency = s["latency_s"]
        ratio = s["total_s"] / ours["total_s"] if s["ok"] and ours["ok"] else None
        spread = "-"
        if latency is not None:
            spread = f"{latency['median']:.2f} ({latency['min']:.2f}-{latency['max']:.2f})"
        loads = s["loads"] if name in ("onnxruntime", "pytorch") else s["loaded_models"]
        rows.append([
            name, "ok" if s["ok"] else "**failed**",
            f"{s['requests_done']}/{len(results['sequence'])}", spread,
            "-" if s["setup_s"] is None else f"{s['setup_s']:.1f}",
            f"{s['total_s']:.1f}", "-" if ratio is None else f"{ratio:.2f}",
            _gib(s["storage_read_bytes"]),
            f"{_gib(s['peak_rss_bytes'])} ({_gib(s['peak_anon_bytes'])})",
            _gib(s["rss_after_setup_bytes"]),
            "-" if loads is None else loads, f"{s['load_before']:.1f}",
        ])  # fmt: skip
    imported = results["import"]
    build = results["build_seconds"]
    pool = ours["pool"] or {}
    failures = [f"- {name}: {s['error']}" for name, s in systems.items() if not s["ok"]]
    agreement = ", ".join(
        f"{name} {diff:.1e}"
        for name, diff in results["max_abs_difference_vs_onnxruntime"].items()
        if diff is not None and name != "onnxruntime"
    )
    built = "" if build is None else f", family build {build:.0f}s"
    intro = (
        f"{results['description']} ({results['family']}; {_gib(results['family_bytes'])} GiB of "
        f"model files on a machine of {_gib(results['memory_bytes'])} GiB). weightdb stores "
        f"{_gib(imported['stored_bytes'])} GiB of {_gib(imported['logical_bytes'])} GiB "
        f"logical after exact dedup (import {imported['import_seconds']:.0f}s{built}). "
        f"{len(results['sequence'])} requests, Zipf({results['skew']}) over the "
        f"{len(results['models'])} models, each {results['request_rows']} rows x "
        f"{results['request_tokens']} token ids; every system in its own process with budget "
        f"B = {_gib(results['budget_bytes'])} GiB (onnxruntime and pytorch: whole models LRU "
        "while their files fit B, reloaded on a miss; safetensors-mmap: the OS page cache, not "
        "bound by B; -all: every model loaded at once), storage kept cold, a watchdog at "
        f"{_gib(results['rss_cap_bytes'])} GiB of anonymous RSS. One run per system"
        + ("; quick mode." if results["quick"] else ".")
    )
    notes = (
        "x weightdb: total seconds over weightdb's (above 1: slower). GiB read: the process's "
        "block input from storage (rusage); what it read and did not map stays in the OS page "
        "cache, in no one's RSS, which for safetensors-mmap and onnxruntime-all is not bound by "
        "B. Peak RSS counts pages of mapped files (the OS can reclaim them), anon does not. "
        "Model loads: models (re)loaded from their files by the LRU baselines, models "
        f"loaded or mapped by the others. weightdb's pool read {_gib(pool.get('bytes_read'))} "
        f"GiB (hit ratio {pool.get('hit_ratio', 0):.2f}, {pool.get('evictions', 0)} evictions; "
        "more than its storage reads when a page evicted within a request came back from the OS "
        "cache, which is dropped between requests). "
        f"load: 1-minute load average before the system ran ({os.cpu_count()} CPUs). "
        "First-request answers vs "
        f"onnxruntime, max abs difference: {agreement or 'n/a'}."
    )
    header = [
        "system", "outcome", "requests", "latency s, median (min-max)", "setup s", "total s",
        "x weightdb", "GiB read", "peak RSS (anon) GiB", "RSS after setup GiB", "model loads",
        "load",
    ]  # fmt: skip
    lines = ["## Scale: models larger than the machine's memory", "", intro, ""]
    lines += [markdown_table(header, rows), "", notes]
    if failures:
        lines += ["", "Failures:", "", *failures]
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    systems = results["systems"]
    names = list(systems)
    panels = [
        ("total seconds", [s["total_s"] for s in systems.values()], None),
        ("GiB read from storage", [s["storage_read_bytes"] / 2**30 for s in systems.values()],
         None),
        ("peak RSS, GiB", [s["peak_rss_bytes"] / 2**30 for s in systems.values()],
         results["budget_bytes"] / 2**30),
    ]  # fmt: skip
    figure = Figure(figsize=(11, 2.8))
    axes = figure.subplots(1, len(panels), sharey=True)
    colors = ["tab:blue" if s["ok"] else "tab:gray" for s in systems.values()]
    for ax, (title, values, budget) in zip(axes, panels, strict=True):
        ax.barh(names, values, color=colors)
        if budget is not None:
            ax.axvline(budget, color="tab:green", linestyle="--", label="budget B")
            ax.axvline(results["memory_bytes"] / 2**30, color="tab:red", linestyle=":",
                       label="machine RAM")  # fmt: skip
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
    figure.suptitle(f"{results['family']}: gray = failed", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


# -- the child: one system serving the whole sequence -----------------------------------------


def _child(config_path: Path, system: str, handshake: bool) -> None:
    """Serve the sequence with ``system``; results go to ``<tmp>/<system>.json`` after every
    step (so a killed child leaves what it did) and the first answer to ``<system>.npy``.
    With ``handshake``, once set up it reports its idle RSS and waits for the parent's go (the
    parent sets its memory limit meanwhile, ``serve_system``)."""
    config = json.loads(config_path.read_text())
    out = Path(config["tmp"]) / system
    record: dict[str, Any] = {"requests": [], "loads": 0, "hits": 0, "loaded_models": None}

    def save() -> None:
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(out.with_suffix(".json"))

    with np.load(config["requests"]) as split:
        feeds = {config["input"]: split[config["input"]]}
    start = time.perf_counter()
    try:
        predict, before = SETUPS[system](config, record, save)
        record["setup_seconds"] = time.perf_counter() - start
        record["rss_after_setup"] = _status_bytes("self", "VmRSS")
        if handshake:
            ready = out.with_suffix(".ready")
            ready.write_text(json.dumps({"rss": record["rss_after_setup"]}))
            while not ready.with_suffix(".go").is_file():
                time.sleep(POLL_SECONDS)
        for k, name in enumerate(config["sequence"]):
            if before:
                before()
            began = time.perf_counter()
            answer = predict(name, feeds)
            seconds = time.perf_counter() - began
            record["requests"].append({"model": name, "seconds": seconds})
            if k == 0:
                np.save(out.with_suffix(".npy"), answer)
            save()
            print(f"    {system}: request {k + 1}/{len(config['sequence'])} {name} "
                  f"{seconds:.2f}s, loads {record['loads']}, RSS "
                  f"{_status_bytes('self', 'VmRSS') / 2**30:.2f} GiB", flush=True)  # fmt: skip
    except Exception as error:  # a system that cannot serve the sequence is a result
        record["error"] = f"{type(error).__name__}: {error}"
    record["seconds"] = time.perf_counter() - start
    save()


class _LRU:
    """Whole models kept while their files' bytes fit in ``budget``; on a miss the least recently
    used leave (their files dropped from the OS cache) before the model loads from its files."""

    def __init__(self, load: Callable[[str], Any], files: dict, budget: int, record: dict):
        self.load, self.files, self.budget, self.record = load, files, budget, record
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.sizes: dict[str, int] = {}

    def get(self, name: str) -> Any:
        if name in self.models:
            self.models.move_to_end(name)
            self.record["hits"] += 1
            return self.models[name]
        size = sum(path.stat().st_size for path in self.files[name])
        while self.models and sum(self.sizes.values()) + size > self.budget:
            evicted = next(iter(self.models))
            del self.models[evicted], self.sizes[evicted]
            gc.collect()  # the evicted model's memory is free before the next one loads
            for path in self.files[evicted]:
                drop_cache(path)
        self.models[name] = self.load(name)
        self.sizes[name] = size
        self.record["loads"] += 1
        return self.models[name]


Setup = Callable[[dict, dict, Callable[[], None]], tuple[Predict, Callable[[], None] | None]]
Runtime = tuple[Callable[[str], Any], Callable[[Any, dict[str, np.ndarray]], np.ndarray]]


def _weightdb(config: dict, record: dict, save: Callable[[], None], policy: str | None = None):
    """``db.predict`` under the budget; the pages folder leaves the OS cache before every
    request (untimed), so a page that left the pool comes back from storage."""
    import weightdb
    from weightdb.database import pool_stats_dict

    db = weightdb.connect(config["db"], create=False, budget=config["budget"], policy=policy)

    def predict(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (answer,) = db.predict(name, feeds).values()
        record["pool"] = pool_stats_dict(db.pool.stats())
        return answer

    return predict, lambda: drop_cache(Path(config["db"]) / "pages")


def _onnxruntime_runtime(config: dict) -> Runtime:
    """Load: an InferenceSession of the model's ONNX file (which maps its external data)."""
    from benchmarks.engine import _ort_session

    def load(name: str) -> Any:
        return _ort_session(Path(config["models"][name]["onnx"]))

    return load, lambda session, feeds: session.run(None, feeds)[0]


def _torch_module(state: dict):
    """The scale graph as an nn.Module: EmbeddingBag(mean), (Linear, ReLU) x 2, Linear; the
    family stores MatMul weights as (in, out), which Linear takes transposed (a view)."""
    import torch

    nn = torch.nn
    with torch.device("meta"):
        module = nn.Sequential(
            nn.EmbeddingBag(*state["embedding.weight"].shape, mode="mean"),
            nn.Linear(*state["fc1.weight"].shape),
            nn.ReLU(),
            nn.Linear(*state["fc2.weight"].shape),
            nn.ReLU(),
            nn.Linear(*state["out.weight"].shape),
        )
    weights = {"0.weight": state["embedding.weight"]}
    for index, layer in ((1, "fc1"), (3, "fc2"), (5, "out")):
        weights[f"{index}.weight"] = state[f"{layer}.weight"].T
        weights[f"{index}.bias"] = state[f"{layer}.bias"]
    module.load_state_dict(weights, assign=True)
    return module.eval()


def _pytorch_runtime(config: dict) -> Runtime:
    """Load: an nn.Module holding every weight of the safetensors file in memory, as
    ``module.load_state_dict(load_file(path))`` into a constructed module does (``load_file``
    alone returns tensors over the mapped file), without initializing the module first."""
    import torch
    from safetensors.torch import load_file

    def load(name: str) -> Any:
        mapped = load_file(config["models"][name]["safetensors"])
        return _torch_module({key: tensor.clone() for key, tensor in mapped.items()})

    def run(module: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (ids,) = feeds.values()
        with torch.inference_mode():
            return module(torch.from_numpy(ids)).numpy()

    return load, run


RUNTIMES = {"onnxruntime": _onnxruntime_runtime, "pytorch": _pytorch_runtime}
LOADED_FROM = {"onnxruntime": ("onnx", "safetensors"), "pytorch": ("safetensors",)}


def _cached(runtime: str) -> Setup:
    """Models of ``runtime`` in an LRU cache of the budget's size."""
    make = RUNTIMES[runtime]

    def setup(config: dict, record: dict, save: Callable[[], None]):
        load, run = make(config)
        models = config["models"]
        files = {n: [Path(models[n][k]) for k in LOADED_FROM[runtime]] for n in models}
        cache = _LRU(load, files, config["budget"], record)
        return lambda name, feeds: run(cache.get(name), feeds), None

    return setup


def _everything(runtime: str) -> Setup:
    """Every model of ``runtime`` loaded at once, before the first request."""
    make = RUNTIMES[runtime]

    def setup(config: dict, record: dict, save: Callable[[], None]):
        load, run = make(config)
        models = {}
        record["loaded_models"] = 0
        for name in config["models"]:
            models[name] = load(name)
            record["loaded_models"] = len(models)
            save()
            print(f"    {runtime}-all: {len(models)}/{len(config['models'])} models loaded, "
                  f"RSS {_status_bytes('self', 'VmRSS') / 2**30:.2f} GiB", flush=True)  # fmt: skip
        return lambda name, feeds: run(models[name], feeds), None

    return setup


def _mapped(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy view of the file mapped into memory."""
    from weightdb.ingest.safetensors_format import MAX_HEADER_BYTES, read_header

    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    claimed = int.from_bytes(mapped[:8], "little")
    header_len, header = read_header(
        path, len(mapped), mapped[: 8 + min(claimed, MAX_HEADER_BYTES)]
    )
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        array = np.frombuffer(mapped, np.float32, (end - begin) // 4, 8 + header_len + begin)
        arrays[name] = array.reshape(info["shape"])
    return arrays


def _safetensors_mmap(config: dict, record: dict, save: Callable[[], None]):
    """Every model's file mapped; the OS pages in the rows and weights a request touches."""
    weights = {name: _mapped(Path(m["safetensors"])) for name, m in config["models"].items()}
    record["loaded_models"] = len(weights)

    def predict(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        w = weights[name]
        (ids,) = feeds.values()
        x = w["embedding.weight"][ids].mean(axis=1)  # Gather, ReduceMean over tokens
        x = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0)
        x = np.maximum(x @ w["fc2.weight"] + w["fc2.bias"], 0)
        return x @ w["out.weight"] + w["out.bias"]

    return predict, None


def _pytorch_mmap(config: dict, record: dict, save: Callable[[], None]):
    """Every model an nn.Module over its safetensors file mapped into memory (``load_file``
    returns tensors over the mapping; ``assign`` keeps them); the OS pages weights in."""
    import torch
    from safetensors.torch import load_file

    modules = {
        name: _torch_module(load_file(m["safetensors"])) for name, m in config["models"].items()
    }
    record["loaded_models"] = len(modules)

    def predict(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (ids,) = feeds.values()
        with torch.inference_mode():
            return modules[name](torch.from_numpy(ids)).numpy()

    return predict, None


POLICY_RUNS = ("lru", "lfu", "netsdb-cost")
"""Replacement policies weightdb also serves with (``weightdb-POLICY``), beside its default."""

SETUPS: dict[str, Setup] = {
    "weightdb": _weightdb,
    **{f"weightdb-{policy}": partial(_weightdb, policy=policy) for policy in POLICY_RUNS},
    "pytorch-mmap": _pytorch_mmap,
    "onnxruntime": _cached("onnxruntime"),
    "pytorch": _cached("pytorch"),
    "safetensors-mmap": _safetensors_mmap,
    "onnxruntime-all": _everything("onnxruntime"),
    "pytorch-all": _everything("pytorch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("run", help="run the benchmark")
    bench.add_argument("--quick", action="store_true")
    child = sub.add_parser("child", help="serve the sequence with one system (used by run)")
    child.add_argument("config", type=Path)
    child.add_argument("system", choices=list(SETUPS))
    child.add_argument("--handshake", action="store_true")
    args = parser.parse_args()
    if args.command == "run":
        run(args.quick, RESULTS_DIR)
    else:
        _child(args.config, args.system, args.handshake)


if __name__ == "__main__":
    main()
