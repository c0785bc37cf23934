"""Budget sweep: each system's latency and throughput as its memory budget grows from 10% to
100% of the models' working set, every system under a real memory limit.

    python -m benchmarks.run budgets            # scale family at 4 GiB (16 x 256 MiB)
    python -m benchmarks.run --quick budgets    # at 2 GiB (16 x 128 MiB), 3 budgets

The ``scale`` zoo family (see ``benchmarks.scale``): 16 variants of an embedding-bag MLP that
each change ~10% of the base's blocks. A Zipf(0.9) sequence over the 16 models is served by each
system in its own process exactly as in the scale suite (the same children, cold storage at
every start, weightdb's pages dropped from the OS cache before every request, the same
watchdog), under budgets B of 10%, 25%, 50%, 75% and 100% (quick: 10%, 50%, 100%) of the
family's model files: the working set of a server that keeps whole models.

Systems: weightdb (pool budget B less 64 MiB of working memory for a request, so the process
fits B; its default replacement policy, and at 10%, 25% and 50% also
lru, lfu and netsdb-cost, for bytes read per policy: only 10% is below what weightdb stores
after dedup, so only there do the policies have to choose), onnxruntime and pytorch keeping
whole models LRU while their files fit B, and numpy (``safetensors-mmap``) and pytorch
(``pytorch-mmap``) over every model's safetensors file memory-mapped, the operating system as
the cache.

Every system runs in a memory cgroup limited to B plus its own idle RSS (``MemoryLimit``), so
the page cache the mapped baselines live on is bound like weightdb's pool: the cgroup's peak is
reported beside bytes read. Unlimited runs (no cgroup: the mapped baselines have the machine's
memory) are kept for reference at 25% and 100% (quick: 50%), labelled as such.

This machine's disk reads a dropped cache at several GB/s, faster than most servers' volumes
(a cloud block volume gives 125-1000 MB/s). So at 25% and 50% (quick: 50%) every system also
runs with its reads of that disk throttled to ``DISK_BYTES_PER_S`` (``ReadThrottle``, cgroup v1
blkio, where available), in the same memory cgroup: what reading fewer bytes is worth on such a
disk.

Floors (issue 17), cgroup runs: weightdb's throughput at least 1.5x the best baseline's at 25%
and 50%, 1.0x at 10%, 0.9x at 100%; the same floors are reported for the throttled runs. Per
system and budget: median request latency (min-max), throughput (requests per second of
serving, setup excluded, one request at a time) with ratios, and a plot of both against B
(``budgets.png``).
"""

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    markdown_table,
    ratio,
    render,
    spread,
    watchdog_cap,
    write_results,
    yes_no,
)
from benchmarks.serve_sequence import POLICY_RUNS, SKEW, serve, write_config
from weightdb.memory_limit import available as cgroups_available
from weightdb.memory_limit import disk_of, drop_page_cache, throttle_available

BASELINES = ("onnxruntime", "pytorch", "safetensors-mmap", "pytorch-mmap")
SYSTEMS = ("weightdb", *BASELINES)
FLOORS = {0.10: 1.0, 0.25: 1.5, 0.50: 1.5, 1.00: 0.9}  # weightdb over the best baseline
POLICY_FRACTIONS = (0.10, 0.25, 0.50)
DISK_BYTES_PER_S = 250 * 10**6  # a general-purpose cloud block volume
MODES = {  # family total and models, budgets as shares of the working set, requests per budget
    "full": {"total": "4GiB", "models": 16, "fractions": (0.10, 0.25, 0.50, 0.75, 1.00),
             "unlimited": (0.25, 1.00), "throttled": (0.25, 0.50), "requests": 32,
             "timeout": 900.0},
    "quick": {"total": "2GiB", "models": 16, "fractions": (0.10, 0.50, 1.00),
              "unlimited": (0.50,), "throttled": (0.50,), "requests": 12, "timeout": 600.0},
}  # fmt: skip


def run(quick: bool, out_dir: Path) -> dict:
    from benchmarks.families import database, isolated, scale_family
    from weightdb.caching.workload import request_sequence

    mode = MODES["quick" if quick else "full"]
    fam, _ = scale_family(mode["total"], mode["models"])
    db_path, imported = isolated(database, fam, "exact")
    working_set = sum(m["bytes"] for m in fam.manifest["models"])
    sequence = request_sequence(fam.models, mode["requests"], SKEW, seed=0)
    cap = watchdog_cap()
    limited = cgroups_available()
    # The throttle binds one disk: the models' files and the database must share it.
    throttled = limited and throttle_available() and disk_of(db_path) == disk_of(fam.manifest_path)
    rows = []
    for fraction in mode["fractions"]:
        budget = int(working_set * fraction)
        runs = [(system, limited, None) for system in SYSTEMS]
        if fraction in POLICY_FRACTIONS:
            runs += [(f"weightdb-{policy}", limited, None) for policy in POLICY_RUNS]
        if limited and fraction in mode["unlimited"]:
            runs += [(system, False, None) for system in SYSTEMS]
        if throttled and fraction in mode["throttled"]:
            runs += [(system, True, DISK_BYTES_PER_S) for system in SYSTEMS]
        with tempfile.TemporaryDirectory(prefix="weightdb-budgets-") as tmp:
            config = write_config(fam, db_path, sequence, budget, Path(tmp))
            for system, cgroup, disk in runs:
                drop_page_cache(fam.manifest_path.parent / "models")
                drop_page_cache(db_path)
                limit = budget if cgroup else None
                outcome = serve(system, config, cap, mode["timeout"], limit, disk)
                rows.append(_row(system, fraction, budget, outcome, disk))
                print(f"budgets: {system} at {fraction:.0%}: {_cell(rows[-1])}", flush=True)
    results = {
        "quick": quick,
        "family": fam.label,
        "description": fam.manifest["description"],
        "working_set_bytes": working_set,
        "stored_bytes": imported["stored_bytes"],
        "skew": SKEW,
        "requests": len(sequence),
        "rss_cap_bytes": cap,
        "fractions": mode["fractions"],
        "cgroups": limited,
        "disk_bytes_per_s": DISK_BYTES_PER_S if throttled else None,
        "rows": rows,
    }
    results["floors"] = _floors(results)
    results["policies"] = _policies(results)
    write_results(out_dir, "budgets", results, _markdown(results))
    _plot(results, out_dir / "budgets.png")
    return results


def _row(
    system: str, fraction: float, budget: int, outcome: dict, disk: int | None
) -> dict[str, Any]:
    seconds = outcome["request_seconds"]
    limit = "cgroup" if outcome["cgroup"] else "unlimited"
    return {
        "system": system,
        "fraction": fraction,
        "budget_bytes": budget,
        "ok": outcome["ok"],
        "error": outcome["error"],
        "latency_s": outcome["latency_s"],
        "requests_per_s": len(seconds) / sum(seconds) if outcome["ok"] else None,
        "storage_read_bytes": outcome["storage_read_bytes"],
        "peak_anon_bytes": outcome["peak_anon_bytes"],
        "loads": outcome["loads"],
        "load_before": outcome["load_before"],
        "limit": limit if disk is None else f"{limit}, disk {disk / 1e6:.0f} MB/s",
        "disk_bytes_per_s": disk,
        "cgroup": outcome["cgroup"],
    }


def _limited(results: dict, throttled: bool = False) -> dict[tuple[str, float], dict]:
    """The cgroup runs (or, without cgroups, the only runs) by (system, fraction), on the
    machine's disk or, ``throttled``, on the throttled one."""
    wanted = "cgroup" if results["cgroups"] else "unlimited"
    if throttled:
        wanted = f"{wanted}, disk {results['disk_bytes_per_s'] / 1e6:.0f} MB/s"
    return {(r["system"], r["fraction"]): r for r in results["rows"] if r["limit"] == wanted}


def _floors(results: dict) -> list[dict]:
    """weightdb's throughput over the best baseline's at each budget the issue sets a floor,
    on this machine's disk and then on the throttled one."""
    floors = _floors_of(_limited(results), None)
    if results.get("disk_bytes_per_s"):
        floors += _floors_of(_limited(results, throttled=True), results["disk_bytes_per_s"])
    return floors


def _floors_of(runs: dict[tuple[str, float], dict], disk: int | None) -> list[dict]:
    floors = []
    for fraction, floor in FLOORS.items():
        if ("weightdb", fraction) not in runs:
            continue
        ours = runs[("weightdb", fraction)]
        finished = [runs[(b, fraction)] for b in BASELINES if runs[(b, fraction)]["ok"]]
        best = max(finished, key=lambda r: r["requests_per_s"], default=None)
        ratio = ours["requests_per_s"] / best["requests_per_s"] if ours["ok"] and best else None
        floors.append(
            {
                "fraction": fraction,
                "disk_bytes_per_s": disk,
                "floor": floor,
                "best_baseline": best["system"] if best else None,
                "ratio": ratio,
                "met": ratio >= floor if ratio is not None else ours["ok"],
            }
        )
    return floors


def _policies(results: dict) -> list[dict]:
    """Bytes weightdb read from storage per replacement policy, where the policies ran."""
    runs = _limited(results)
    table = []
    for fraction in POLICY_FRACTIONS:
        if ("weightdb", fraction) not in runs:
            continue
        names = ["weightdb", *(f"weightdb-{p}" for p in POLICY_RUNS)]
        read = {
            name.removeprefix("weightdb-") if name != "weightdb" else "weightdb (default)": (
                runs[(name, fraction)]["storage_read_bytes"]
            )
            for name in names
        }
        table.append({"fraction": fraction, "bytes_read": read})
    return table


FLOOR_HEADER = [
    "budget", "disk", "floor: weightdb / best baseline", "best baseline", "measured", "met",
]  # fmt: skip


def _disk(bytes_per_s: int | None) -> str:
    return "this machine's" if bytes_per_s is None else f"read at {bytes_per_s / 1e6:.0f} MB/s"


def _cell(row: dict) -> str:
    if not row["ok"]:
        return f"failed ({row['error']})"
    return f"{spread(row['latency_s'], '{:.3f}', unit=' s')}, {row['requests_per_s']:.2f} req/s"


REPORT = """
## Budgets: latency and throughput from 10% to 100% of the working set

$description ($family). Working set: the $working_set_gib GiB of model files; weightdb stores \
$stored_gib GiB after exact dedup. $requests requests, Zipf($skew), one at a time, every \
system in its own process with budget B (weightdb: its pool, B less 64 MiB of working memory \
for a request; onnxruntime and pytorch: whole \
models LRU while their files fit B; safetensors-mmap and pytorch-mmap: the OS page cache), \
storage cold at the start and weightdb's pages dropped from the OS cache before every \
request. $limits One run per system and budget$quick.

$table

Throughput: requests per second of serving, setup excluded. Ratio above 1: weightdb serves \
more requests per second (against weightdb's run under the same kind of limit). MiB read: the \
process's block input from storage (rusage). cgroup peak: the most memory, RSS and page cache, \
the run's cgroup held. load: 1-minute load average before the run (2 CPUs).

Floors (issue 17, cgroup runs; "read at": the same runs with every system's reads throttled):

$floors

Bytes weightdb read from storage per replacement policy (cgroup runs):

$policies
"""
LIMITS = {
    True: "limit: each run's memory cgroup, B plus the process's idle RSS, page cache included "
    "(runs marked unlimited have the machine's memory).",
    False: "No memory cgroups here (not root): B binds weightdb and the LRU baselines only.",
}
HEADER = [
    "budget B", "system", "limit", "latency median (min-max), throughput",
    "weightdb throughput / system's", "MiB read", "cgroup peak MiB", "load",
]  # fmt: skip


def _markdown(results: dict) -> str:
    table = []
    for row in results["rows"]:
        ours = next(
            r
            for r in results["rows"]
            if r["system"] == "weightdb"
            and r["fraction"] == row["fraction"]
            and r["limit"] == row["limit"]
        )
        cgroup = row["cgroup"]
        table.append(
            [
                f"{row['fraction']:.0%} ({row['budget_bytes'] / 2**20:.0f} MiB)",
                row["system"],
                row["limit"] + (f" ({cgroup['limit_bytes'] / 2**20:.0f} MiB)" if cgroup else ""),
                _cell(row),
                ratio(ours["requests_per_s"], row["requests_per_s"], "{:.2f}")
                if row["ok"] and ours["ok"]
                else "-",
                f"{row['storage_read_bytes'] / 2**20:.0f}",
                f"{cgroup['peak_bytes'] / 2**20:.0f}" if cgroup else "-",
                f"{row['load_before']:.1f}",
            ]
        )
    floors = [
        [
            f"{f['fraction']:.0%}",
            _disk(f["disk_bytes_per_s"]),
            f"{f['floor']}x",
            f["best_baseline"] or "none finished",
            f"{f['ratio']:.2f}x" if f["ratio"] is not None else "-",
            yes_no(f["met"]),
        ]
        for f in results["floors"]
    ]
    policies = []
    for cell in results["policies"]:
        read = cell["bytes_read"]
        default = read["weightdb (default)"]
        others = min(v for k, v in read.items() if k != "weightdb (default)")
        policies.append(
            [
                f"{cell['fraction']:.0%}",
                *(f"{read[k] / 2**20:.0f}" for k in read),
                min(read, key=read.get),
                ratio(default, others, "{:.3f}x"),
            ]
        )
    policy_names = results["policies"][0]["bytes_read"] if results["policies"] else {}
    policy_header = ["budget", *(f"{k} MiB read" for k in policy_names), "fewest"]
    policy_header.append("default / best other")
    return render(
        REPORT,
        description=results["description"],
        family=results["family"],
        working_set_gib=f"{results['working_set_bytes'] / 2**30:.2f}",
        stored_gib=f"{results['stored_bytes'] / 2**30:.2f}",
        requests=results["requests"],
        skew=results["skew"],
        limits=LIMITS[results["cgroups"]],
        quick="; quick mode" if results["quick"] else "",
        table=markdown_table(HEADER, table),
        floors=markdown_table(
            FLOOR_HEADER,
            floors,
        ),
        policies=markdown_table(policy_header, policies) if policies else "(not run at this size)",
    )


def _plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.5))
    latency_axis, throughput_axis = figure.subplots(1, 2)
    runs = _limited(results)
    for system in SYSTEMS:
        rows = [runs[(system, f)] for f in results["fractions"] if runs[(system, f)]["ok"]]
        shares = [100 * r["fraction"] for r in rows]
        latency_axis.plot(shares, [r["latency_s"]["median"] for r in rows], marker="o")
        throughput_axis.plot(shares, [r["requests_per_s"] for r in rows], marker="o", label=system)
    stored_share = 100 * results["stored_bytes"] / results["working_set_bytes"]
    for axis, title in (
        (latency_axis, "median request latency, s"),
        (throughput_axis, "requests per second"),
    ):
        axis.axvline(stored_share, color="gray", linestyle=":", label="weightdb's stored bytes")
        axis.set_xlabel("budget B, % of the working set")
        axis.set_title(title, fontsize=9)
    latency_axis.set_yscale("log")
    throughput_axis.legend(fontsize=7)
    figure.suptitle(results["family"], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
