"""Scale: models that together exceed the machine's memory, served under a budget of a few GiB.

    python -m benchmarks.run scale           # 28 GiB of models, ~35 GB of disk: 11 min, 4 cached
                                             # (measured before the cgroup runs, which double
                                             # the systems' runs: expect about twice that)
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
- safetensors-mmap and pytorch-mmap: every model's safetensors file memory-mapped, numpy or
  PyTorch forward; the operating system is the cache (only the memory cgroup below bounds it).
- onnxruntime-all and pytorch-all, "load everything": every model loaded at once, then the
  requests. pytorch-all needs all 28 GiB in memory; onnxruntime-all maps them.

Every system runs in its own memory cgroup (``weightdb.memory_limit``, when this process may
create one) limited to B plus the process's idle RSS, measured once its libraries are loaded and
before it loads or maps a model: page cache included, so the mapped baselines and the -all
variants are held to B like weightdb's pool, and a system the OOM killer ends has failed at B.
Runs without a cgroup, the machine's memory as their limit, are kept for reference (every
system at full size, weightdb and safetensors-mmap in quick mode) and labelled unlimited.
Floor (issue 17), cgroup runs: weightdb's total seconds below every baseline that finishes.

Each system is a child process (``benchmarks.serve_sequence``). A watchdog kills any system
whose anonymous resident memory (what the kernel cannot reclaim without swap, which this machine
lacks) passes a cap: 20 GiB at full size, lowered to leave 2 GiB of the memory available at the
start to the machine's other jobs. Such a system fails with the
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

import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    available_memory,
    markdown_table,
    ratio,
    render,
    spread,
    total_memory,
    watchdog_cap,
    write_results,
)
from benchmarks.serve_sequence import SKEW, agreement, serve, write_config
from weightdb.memory_limit import available as cgroups_available
from weightdb.memory_limit import drop_page_cache

SYSTEMS = (
    "weightdb", "onnxruntime", "pytorch", "safetensors-mmap", "pytorch-mmap", "onnxruntime-all",
    "pytorch-all",
)  # fmt: skip
MODES = {  # family total and models, requests, budget B, watchdog cap, seconds per system,
    # systems also run without a memory cgroup
    "full": {"total": "28GiB", "models": 16, "requests": 32, "budget": 4 << 30,
             "rss_cap": 20 << 30, "timeout": 3600.0, "unlimited": SYSTEMS},
    "quick": {"total": "2GiB", "models": 16, "requests": 16, "budget": 256 << 20,
              "rss_cap": 2 << 30, "timeout": 600.0,
              "unlimited": ("weightdb", "safetensors-mmap")},
}  # fmt: skip


def run(quick: bool, out_dir: Path) -> dict:
    from benchmarks.families import database, isolated, scale_family
    from weightdb.caching.workload import request_sequence
    from weightdb.zoo.families.scale import REQUEST_ROWS, REQUEST_TOKENS

    mode = MODES["quick" if quick else "full"]
    fam, build_seconds = scale_family(mode["total"], mode["models"])
    models_dir = fam.manifest_path.parent / "models"
    print(f"  importing {fam.label} into weightdb (cached once done)", flush=True)
    db_path, imported = isolated(database, fam, "exact")
    entries = {m["name"]: m for m in fam.manifest["models"]}
    sequence = request_sequence(fam.models, mode["requests"], SKEW, seed=0)
    cap = watchdog_cap(mode["rss_cap"])
    limited = cgroups_available()
    results: dict[str, Any] = {
        "quick": quick,
        "family": fam.label,
        "description": fam.manifest["description"],
        "models": fam.models,
        "model_bytes": {name: m["bytes"] for name, m in entries.items()},
        "family_bytes": sum(m["bytes"] for m in entries.values()),
        "build_seconds": build_seconds,
        "import": imported,
        "memory_bytes": total_memory(),
        "mem_available_bytes": available_memory(),
        "budget_bytes": mode["budget"],
        "rss_cap_bytes": cap,
        "skew": SKEW,
        "request_rows": REQUEST_ROWS,
        "request_tokens": REQUEST_TOKENS,
        "sequence": sequence,
        "cgroups": limited,
        "systems": {},  # the cgroup runs (without cgroups: the only runs)
        "unlimited": {},  # reference runs without a cgroup, when the others had one
    }
    runs = [(system, "systems", limited) for system in SYSTEMS]
    if limited:
        runs += [(system, "unlimited", False) for system in mode["unlimited"]]
    with tempfile.TemporaryDirectory(prefix="weightdb-scale-") as tmp:
        config_path = write_config(fam, db_path, sequence, mode["budget"], Path(tmp))
        for system, kind, cgroup in runs:
            limit = "cgroup" if cgroup else "unlimited"
            print(f"  {system} ({limit}): {len(sequence)} requests, B {mode['budget'] >> 20} "
                  f"MiB, RSS cap {cap / 2**30:.1f} GiB", flush=True)  # fmt: skip
            drop_page_cache(models_dir)  # cold storage for every system at its start
            drop_page_cache(db_path)
            outcome = serve(
                system, config_path, cap, mode["timeout"], mode["budget"] if cgroup else None
            )
            results[kind][system] = outcome
            print(f"  {system} ({limit}): {_outcome(outcome)}, {outcome['total_s']:.0f}s, "
                  f"{outcome['storage_read_bytes'] / 2**30:.2f} GiB read, peak RSS "
                  f"{outcome['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
        results["max_abs_difference_vs_onnxruntime"] = agreement(Path(tmp), SYSTEMS)
    results["floor"] = ahead_of_baselines(results["systems"])
    write_results(out_dir, "scale", results, _markdown(results))
    _plot(results, out_dir / "scale.png")
    return results


def ahead_of_baselines(systems: dict[str, dict]) -> dict:
    """The issue-17 floor: weightdb's total seconds (setup and requests: a system that loads
    every model first pays for it) below every baseline's that served the whole sequence."""
    ours = systems["weightdb"]
    finished = {name: s["total_s"] for name, s in systems.items() if name != "weightdb" and s["ok"]}
    behind = [n for n, seconds in finished.items() if ours["ok"] and seconds <= ours["total_s"]]
    return {
        "finished": sorted(finished, key=finished.get),
        "failed": [name for name, s in systems.items() if not s["ok"] and name != "weightdb"],
        "fastest_baseline": min(finished, key=finished.get, default=None),
        "ratio_to_fastest": (
            min(finished.values()) / ours["total_s"] if ours["ok"] and finished else None
        ),
        "at_least_as_fast": behind,
        "met": ours["ok"] and not behind,
    }


def _outcome(outcome: dict) -> str:
    return "ok" if outcome["ok"] else f"FAILED ({outcome['error']})"


def _gib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**30:.2f}"


REPORT = """
## Scale: models larger than the machine's memory

$description ($family; $family_gib GiB of model files on a machine of $memory_gib GiB). \
weightdb stores $stored_gib GiB of $logical_gib GiB logical after exact dedup (import \
${import_s}s$built). $requests requests, Zipf($skew) over the $models models, each \
$request_rows rows x $request_tokens token ids; every system in its own process with budget \
B = $budget_gib GiB (onnxruntime and pytorch: whole models LRU while their files fit B, \
reloaded on a miss; safetensors-mmap and pytorch-mmap: the OS page cache; -all: every model \
loaded at once), storage kept cold, a watchdog at $cap_gib GiB of anonymous RSS. $limits One \
run per system and limit$quick.

$table

x weightdb: total seconds over weightdb's under the same kind of limit (above 1: slower). GiB \
read: the process's block input from storage (rusage). cgroup peak: the most memory, RSS and \
page cache, the run's cgroup held (its limit in brackets). Peak RSS counts pages of mapped \
files (the OS can reclaim them), anon does not. Model loads: models (re)loaded from their \
files by the LRU baselines, models loaded or mapped by the others. weightdb's pool read \
$pool_gib GiB (hit ratio $hit_ratio, $evictions evictions; more than its storage reads when a \
page evicted within a request came back from the OS cache, which is dropped between \
requests). load: 1-minute load average before the system ran ($cpus CPUs). First-request \
answers vs onnxruntime, max abs difference: $agreement.

Floor (issue 17, $floor_runs): weightdb ahead of every baseline that finishes (total \
seconds): $floor_met. $floor_detail
$failures
"""
LIMITS = {
    True: "Limits: each run marked cgroup in a memory cgroup of B plus the process's idle RSS, "
    "page cache included (an OOM kill there is a failure at B); runs marked unlimited have the "
    "machine's memory, where B binds weightdb's pool and the LRU baselines only.",
    False: "No memory cgroups in these runs: every run is unlimited, B binds weightdb's pool "
    "and the LRU baselines only, and the OS page cache of the others is unbounded.",
}

HEADER = [
    "system", "limit", "outcome", "requests", "latency s, median (min-max)", "setup s",
    "total s", "x weightdb", "GiB read", "cgroup peak GiB", "peak RSS (anon) GiB",
    "RSS after setup GiB", "model loads", "load",
]  # fmt: skip


def _rows(results: dict, systems: dict[str, dict]) -> list[list[object]]:
    ours = systems.get("weightdb")
    rows = []
    for name, s in systems.items():
        loads = s["loads"] if name in ("onnxruntime", "pytorch") else s["loaded_models"]
        cgroup = s.get("cgroup")
        limited = f"cgroup ({_gib(cgroup['limit_bytes'])} GiB)" if cgroup else "unlimited"
        rows.append([
            name, limited, "ok" if s["ok"] else "**failed**",
            f"{s['requests_done']}/{len(results['sequence'])}", spread(s["latency_s"]),
            "-" if s["setup_s"] is None else f"{s['setup_s']:.1f}", f"{s['total_s']:.1f}",
            ratio(s["total_s"], ours["total_s"], "{:.2f}") if s["ok"] and ours and ours["ok"]
            else "-",
            _gib(s["storage_read_bytes"]), _gib(cgroup["peak_bytes"]) if cgroup else "-",
            f"{_gib(s['peak_rss_bytes'])} ({_gib(s['peak_anon_bytes'])})",
            _gib(s["rss_after_setup_bytes"]), "-" if loads is None else loads,
            f"{s['load_before']:.1f}",
        ])  # fmt: skip
    return rows


def _markdown(results: dict) -> str:
    systems, unlimited = results["systems"], results["unlimited"]
    ours = systems["weightdb"]
    rows = _rows(results, systems) + _rows(results, unlimited)
    imported, build, pool = results["import"], results["build_seconds"], ours["pool"] or {}
    failures = [
        f"- {name} ({'cgroup' if s.get('cgroup') else 'unlimited'}): {s['error']}"
        for runs in (systems, unlimited)
        for name, s in runs.items()
        if not s["ok"]
    ]
    agreed = ", ".join(
        f"{name} {diff:.1e}"
        for name, diff in results["max_abs_difference_vs_onnxruntime"].items()
        if diff is not None and name != "onnxruntime"
    )
    floor = results["floor"]
    fastest = floor["fastest_baseline"]
    if not ours["ok"]:
        detail = "weightdb did not finish"
    elif fastest is None:
        detail = "no baseline finished"
    else:
        detail = (
            f"fastest baseline that finished: {fastest}, {floor['ratio_to_fastest']:.2f}x "
            "weightdb's time"
        )
    if floor["at_least_as_fast"]:
        detail += f"; as fast as weightdb or faster: {', '.join(floor['at_least_as_fast'])}"
    if floor["failed"]:
        detail += f"; failed: {', '.join(floor['failed'])}"
    return render(
        REPORT,
        description=results["description"],
        family=results["family"],
        family_gib=_gib(results["family_bytes"]),
        memory_gib=_gib(results["memory_bytes"]),
        stored_gib=_gib(imported["stored_bytes"]),
        logical_gib=_gib(imported["logical_bytes"]),
        import_s=f"{imported['import_seconds']:.0f}",
        built="" if build is None else f", family build {build:.0f}s",
        requests=len(results["sequence"]),
        skew=results["skew"],
        models=len(results["models"]),
        request_rows=results["request_rows"],
        request_tokens=results["request_tokens"],
        budget_gib=_gib(results["budget_bytes"]),
        cap_gib=_gib(results["rss_cap_bytes"]),
        limits=LIMITS[results["cgroups"]],
        quick="; quick mode" if results["quick"] else "",
        table=markdown_table(HEADER, rows),
        pool_gib=_gib(pool.get("bytes_read")),
        hit_ratio=f"{pool.get('hit_ratio', 0):.2f}",
        evictions=pool.get("evictions", 0),
        cpus=os.cpu_count(),
        agreement=agreed or "n/a",
        floor_runs="memory cgroup runs" if results["cgroups"] else "unlimited runs: no cgroups",
        floor_met="met" if floor["met"] else "NOT met",
        floor_detail=detail[0].upper() + detail[1:] + ".",
        failures="\n".join(["", "Failures:", "", *failures]) if failures else "",
    )


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
