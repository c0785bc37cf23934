"""Budget sweep: each system's latency and throughput as its memory budget grows from 10% to
100% of the models' working set.

    python -m benchmarks.run budgets            # scale family at 4 GiB (16 x 256 MiB), ~10 min
    python -m benchmarks.run --quick budgets    # at 2 GiB (16 x 128 MiB), 3 budgets, ~1 min

The ``scale`` zoo family (see ``benchmarks.scale``): 16 variants of an embedding-bag MLP that
each change ~10% of the base's blocks. A Zipf(0.9) sequence over the 16 models is served by
weightdb, onnxruntime, pytorch and safetensors-mmap, each in its own process exactly as in the
scale suite (the same children, cold storage at every start, weightdb's pages dropped from the
OS cache before every request, the same watchdog), under budgets B of 10%, 25%, 50%, 75% and
100% (quick: 10%, 50%, 100%) of the family's model files: the working set of a server that
keeps whole models, which at 100% holds every model. weightdb's exact deduplication stores the
family in a fraction of that, so it can keep its pages in memory where the others reload.
safetensors-mmap leaves caching to the operating system's page cache, which B does not bind: it
is measured at every B for reference, and at every B it has the whole machine's memory.

Per system and budget: median request latency (min-max) and throughput (requests per second of
serving, setup excluded, one request at a time), with ratios to weightdb; a plot of both
against B (``budgets.png``).
"""

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import drop_cache, markdown_table, write_results
from benchmarks.scale import RSS_HEADROOM, SKEW, meminfo, scale_family, serve_system, write_config

SYSTEMS = ("weightdb", "onnxruntime", "pytorch", "safetensors-mmap")
MODES = {  # family total and models, budgets as shares of the working set, requests per budget
    "full": {"total": "4GiB", "models": 16, "fractions": (0.10, 0.25, 0.50, 0.75, 1.00),
             "requests": 32, "timeout": 900.0},
    "quick": {"total": "2GiB", "models": 16, "fractions": (0.10, 0.50, 1.00), "requests": 12,
              "timeout": 600.0},
}  # fmt: skip


def run(quick: bool, out_dir: Path) -> dict:
    from benchmarks.families import database, isolated
    from weightdb.caching.workload import request_sequence

    mode = MODES["quick" if quick else "full"]
    fam, _ = scale_family(mode["total"], mode["models"])
    db_path, imported = isolated(database, fam, "exact")
    working_set = sum(m["bytes"] for m in fam.manifest["models"])
    sequence = request_sequence(fam.models, mode["requests"], SKEW, seed=0)
    cap = meminfo("MemAvailable") - RSS_HEADROOM
    rows = []
    for fraction in mode["fractions"]:
        budget = int(working_set * fraction)
        with tempfile.TemporaryDirectory(prefix="weightdb-budgets-") as tmp:
            config = write_config(fam, db_path, sequence, budget, Path(tmp))
            for system in SYSTEMS:
                drop_cache(fam.manifest_path.parent / "models")
                drop_cache(db_path)
                outcome = serve_system(system, config, cap, mode["timeout"])
                rows.append(_row(system, fraction, budget, outcome))
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
        "rows": rows,
    }
    write_results(out_dir, "budgets", results, _markdown(results))
    _plot(results, out_dir / "budgets.png")
    return results


def _row(system: str, fraction: float, budget: int, outcome: dict) -> dict[str, Any]:
    seconds = outcome["request_seconds"]
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
    }


def _cell(row: dict) -> str:
    if not row["ok"]:
        return f"failed ({row['error']})"
    latency = row["latency_s"]
    return (
        f"{latency['median']:.3f} s ({latency['min']:.3f}-{latency['max']:.3f}), "
        f"{row['requests_per_s']:.2f} req/s"
    )


def _markdown(results: dict) -> str:
    by_key = {(r["system"], r["fraction"]): r for r in results["rows"]}
    table = []
    for fraction in results["fractions"]:
        ours = by_key[("weightdb", fraction)]
        for system in SYSTEMS:
            row = by_key[(system, fraction)]
            ratio = (
                f"{ours['requests_per_s'] / row['requests_per_s']:.2f}"
                if row["ok"] and ours["ok"]
                else "-"
            )
            table.append(
                [
                    f"{fraction:.0%} ({row['budget_bytes'] / 2**20:.0f} MiB)",
                    system,
                    _cell(row),
                    ratio,
                    f"{row['storage_read_bytes'] / 2**20:.0f}",
                    f"{row['peak_anon_bytes'] / 2**20:.0f}",
                    f"{row['load_before']:.1f}",
                ]
            )
    gib = 2**30
    intro = (
        f"{results['description']} ({results['family']}). Working set: the "
        f"{results['working_set_bytes'] / gib:.2f} GiB of model files; weightdb stores "
        f"{results['stored_bytes'] / gib:.2f} GiB after exact dedup. {results['requests']} "
        f"requests, Zipf({results['skew']}), one at a time, every system in its own process "
        "with budget B (onnxruntime and pytorch: whole models LRU while their files fit B; "
        "safetensors-mmap: the OS page cache, which B does not bind), storage cold at the "
        "start and weightdb's pages dropped from the OS cache before every request. One run per "
        "system and budget" + ("; quick mode." if results["quick"] else ".")
    )
    header = [
        "budget B",
        "system",
        "latency median (min-max), throughput",
        "weightdb throughput / system's",
        "MiB read",
        "peak anon MiB",
        "load",
    ]
    return "\n".join(
        [
            "## Budgets: latency and throughput from 10% to 100% of the working set",
            "",
            intro,
            "",
            markdown_table(header, table),
            "",
            "Throughput: requests per second of serving, setup excluded. Ratio above 1: "
            "weightdb serves more requests per second. MiB read: the process's block input from "
            "storage (rusage). load: 1-minute load average before the run (2 CPUs).",
        ]
    )


def _plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.5))
    latency_axis, throughput_axis = figure.subplots(1, 2)
    for system in SYSTEMS:
        rows = [r for r in results["rows"] if r["system"] == system and r["ok"]]
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
