"""Replacement policies on page traces recorded from real serving runs of the zoo families,
against Belady's optimum, and end-to-end latency per policy with cold storage.

    python -m benchmarks.run [--quick] caching

Per family (its database after exact deduplication, see ``benchmarks.families``), four request
sequences: Zipf model popularity with skew 0.6, 0.9 and 1.2, and a shifting one (skew 0.9, the
ranking rotates half-way). Each request is ``db.predict`` of one model on a few rows of its test
split. The sequence runs once under ``db.record_trace`` with a pool too small to keep any model
resident (a prepared model whose weights fit in the pool keeps a copy and stops asking the
pool), so the trace holds every page request the engine makes. Budgets are 10%, 25% and 50%
of the trace's working set (the deduplicated bytes it touches).

Replay: every policy and ``opt`` on each trace and budget; hit ratio and bytes read, as a
ratio to opt. A reference column, ``online bound``, is what any online policy must expect to
read on the trace's mix of queries in an unknown order, even told every page's popularity in
advance (``weightdb.caching.online_bound``): the gap from a policy to it is what the policy
could still learn, the gap from it to opt is the price of not knowing which query comes next.
Floors checked:
``weightdb`` reads no more bytes than the best of lru/mru/lfu/netsdb-cost on every trace and
budget, and at most 1.2x opt's bytes on the Zipf traces at 25%.

Real runs (``REAL_CASES``): ``connect(budget=B, policy=P)`` and the same requests again, the
pages folder dropped from the OS cache before every request (a page that left the pool must come
from storage, not from the OS's copy); the sum of request latencies, median with min and max,
and bytes read. Models the engine kept resident at that budget are counted, since they change what
the pool sees.
"""

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import weightdb
from benchmarks import families
from benchmarks.harness import (
    markdown_table,
    render,
    spread,
    summary,
    write_results,
    yes_no,
)
from weightdb.caching.online_bound import online_bound
from weightdb.caching.simulate import POLICY_NAMES, Budget, simulate
from weightdb.caching.trace import Trace, read_trace
from weightdb.caching.workload import request_sequence
from weightdb.memory_limit import drop_page_cache
from weightdb.storage.policies import DEFAULT_POLICY, POLICIES

BUDGETS = (0.10, 0.25, 0.50)
SKEWS = (0.6, 0.9, 1.2)
SHIFTING_SKEW = 0.9
BASELINES = ("lru", "mru", "lfu", "netsdb-cost")
OPT_FLOOR = 1.2  # weightdb bytes / opt bytes allowed on Zipf traces at 25%
BATCH_ROWS = 4
QUICK_FAMILIES = [("xml-mlp", "small", True), ("text-embedding", "small", True)]
FULL_FAMILIES = [
    ("digits-cnn", "full", True),
    ("xml-mlp", "small", True),
    ("text-embedding", "full", True),
    ("minilm-finetunes", "small", False),
    ("xml-mlp", "full", False),
]
"""(family, size, whether to serve it for real too). A cold xml-mlp/full request reads about
200 MB, so its real runs would take an hour; it and MiniLM (whose embedding is gathered, like
text-embedding's) are recorded and replayed only."""
REAL_CASES = {("zipf-0.9", 0.10), ("zipf-0.9", 0.25), ("zipf-0.9", 0.50), ("shifting-0.9", 0.25)}
"""Trace and budget pairs also served for real: every request reads from cold storage, so
real runs cost minutes where a replay costs milliseconds."""

Request = tuple[str, dict[str, np.ndarray]]


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    model_requests = 60 if quick else 100
    repeats = 1 if quick else 3
    rows, traces = [], []
    for name, size, serve in QUICK_FAMILIES if quick else FULL_FAMILIES:
        fam = families.family(name, size)
        path, _ = families.database(fam, "exact")
        for trace_name, requests in _sequences(fam, model_requests).items():
            trace, facts = families.isolated(_record, path, requests)
            label = f"{fam.label} {trace_name}"
            print(f"caching: recorded {label}: {facts['page_requests']} page requests", flush=True)
            traces.append({"family": fam.label, "trace": trace_name, **facts})
            for fraction in BUDGETS:
                budget = int(trace.working_set_bytes * fraction)
                replay = {p: simulate(trace, p, Budget(bytes=budget)) for p in POLICY_NAMES}
                bound = online_bound(trace, Budget(bytes=budget))
                real = {}
                if serve and (trace_name, fraction) in REAL_CASES:
                    real = families.isolated(_real_runs, path, requests, budget, repeats)
                rows.append(_row(fam.label, trace_name, fraction, budget, replay, bound, real))
                print(f"caching: {fam.label} {trace_name} {fraction:.0%} done", flush=True)
    results = {
        "quick": quick,
        "model_requests": model_requests,
        "batch_rows": BATCH_ROWS,
        "repeats": repeats,
        "budgets": list(BUDGETS),
        "traces": traces,
        "rows": rows,
        "floors": _floors(rows),
    }
    write_results(out_dir, "caching", results, _markdown(results))
    _plot(rows, out_dir / "caching.png")
    return results


def _sequences(fam: families.Family, count: int) -> dict[str, list[Request]]:
    """The request sequences, each request a model and a test batch (rows vary per request)."""
    orders = {f"zipf-{skew}": request_sequence(fam.models, count, skew, seed=0) for skew in SKEWS}
    orders[f"shifting-{SHIFTING_SKEW}"] = request_sequence(
        fam.models, count, SHIFTING_SKEW, seed=0, shift=True
    )
    return {
        name: [
            (model, fam.test_batch(model, BATCH_ROWS, i * BATCH_ROWS))
            for i, model in enumerate(order)
        ]
        for name, order in orders.items()
    }


def _record(path: Path, requests: list[Request]) -> tuple[Trace, dict]:
    """Serve ``requests`` once under ``record_trace``; the pool is half the smallest model,
    so no prepared model keeps its weights resident and every page request reaches the pool."""
    with weightdb.connect(path, create=False, budget=None) as db:
        smallest = min(model.logical_bytes for model in db.models())
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch) / "trace.json"
        with weightdb.connect(path, create=False, budget=smallest // 2) as db:
            start = time.perf_counter()
            with db.record_trace(file):
                for model, inputs in requests:
                    db.predict(model, inputs)
            seconds = time.perf_counter() - start
        trace = read_trace(file)
    facts = {
        "model_requests": len(requests),
        "page_requests": len(trace.requests),
        "distinct_pages": len({request.page for request in trace.requests}),
        "working_set_bytes": trace.working_set_bytes,
        "recording_budget_bytes": smallest // 2,
        "recording_seconds": seconds,
    }
    return trace, facts


def _real_runs(path: Path, requests: list[Request], budget: int, repeats: int) -> dict:
    """Every policy serving ``requests`` ``repeats`` times, policies taking turns so that
    noise from the shared machine falls on all of them alike (in a process of its own, see
    ``families.isolated``)."""
    runs = {policy: [] for policy in POLICIES}
    for _ in range(repeats):
        for policy, outcomes in runs.items():
            outcomes.append(_serve(path, requests, budget, policy))
    by_policy = {}
    for policy, outcomes in runs.items():
        seconds = [outcome.pop("seconds") for outcome in outcomes]
        by_policy[policy] = {"seconds": summary(seconds, with_runs=True), **outcomes[-1]}
    return by_policy


def _serve(path: Path, requests: list[Request], budget: int, policy: str) -> dict:
    """Serve ``requests`` on a fresh connection with ``budget`` and ``policy``, storage cold
    before every request; seconds are the sum of request latencies (dropping is not timed)."""
    elapsed, served, resident = 0.0, set(), set()
    with weightdb.connect(path, create=False, budget=budget, policy=policy) as db:
        for model, inputs in requests:
            drop_page_cache(path / "pages")
            asked = _pool_requests(db)
            start = time.perf_counter()
            db.predict(model, inputs)
            elapsed += time.perf_counter() - start
            if model in served and _pool_requests(db) == asked:
                resident.add(model)
            served.add(model)
        stats = db.pool.stats()
    return {
        "seconds": elapsed,
        "bytes_read": stats.bytes_read,
        "hit_ratio": stats.hit_ratio,
        "pool_requests": stats.hits + stats.misses,
        "resident_models": sorted(resident),
    }


def _pool_requests(db: weightdb.Database) -> int:
    stats = db.pool.stats()
    return stats.hits + stats.misses


def _row(
    family: str, trace: str, fraction: float, budget: int, replay: dict, bound: int, real: dict
) -> dict[str, Any]:
    opt_bytes = replay["opt"].bytes_read
    best_baseline = min(replay[name].bytes_read for name in BASELINES)
    ours = replay[DEFAULT_POLICY].bytes_read
    return {
        "family": family,
        "trace": trace,
        "budget": fraction,
        "budget_bytes": budget,
        "replay": {
            name: {**result.to_json(), "bytes_vs_opt": result.bytes_read / opt_bytes}
            for name, result in replay.items()
        },
        "online_bound": {"bytes_read": bound, "bytes_vs_opt": bound / opt_bytes},
        "real": real,
        "weightdb_beats_baselines": ours <= best_baseline,
        "weightdb_vs_best_baseline": ours / best_baseline,
        "weightdb_within_opt_floor": ours <= OPT_FLOOR * opt_bytes,
    }


def _opt_floor_applies(row: dict[str, Any]) -> bool:
    return row["budget"] == 0.25 and row["trace"].startswith("zipf")


def _floors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    floored = [row for row in rows if _opt_floor_applies(row)]
    return {
        "weightdb_beats_baselines": all(row["weightdb_beats_baselines"] for row in rows),
        "worst_weightdb_vs_best_baseline": max(row["weightdb_vs_best_baseline"] for row in rows),
        "weightdb_within_opt_floor": all(row["weightdb_within_opt_floor"] for row in floored),
        "worst_weightdb_vs_opt_zipf_25": max(
            row["replay"][DEFAULT_POLICY]["bytes_vs_opt"] for row in floored
        ),
        "worst_weightdb_vs_online_bound_zipf_25": max(
            row["replay"][DEFAULT_POLICY]["bytes_read"] / row["online_bound"]["bytes_read"]
            for row in floored
        ),
        "zipf_25_cells": len(floored),
        "zipf_25_cells_beyond_online_policies": [
            f"{row['family']} {row['trace']}"
            for row in floored
            if row["online_bound"]["bytes_vs_opt"] > OPT_FLOOR
        ],
    }


REPORT = """
## Caching: replacement policies on recorded serving traces

Each request is one prediction on $batch_rows test rows; budgets are shares of the trace's \
working set (deduplicated bytes touched).

$traces

Replay of the recorded traces. Cells: bytes read / opt's bytes read (hit ratio); opt: MiB \
read (hit ratio).

$replay

- $ours reads no more than the best baseline everywhere: $beats (worst $ours / best \
baseline: $worst_vs_baseline)
- $ours within ${opt_floor}x opt on Zipf traces at 25%: $within (worst: ${worst_vs_opt}x; \
worst $ours / online bound: $worst_vs_bound)
- Zipf cells at 25% where even the online bound is above ${opt_floor}x opt, so no online \
policy can expect to meet that floor: $beyond_count of $zipf_cells ($beyond)

Real runs, storage cold before every request ($repeats runs each): sum of request latencies \
in s, median (min-max), and MiB read from storage. Resident: models whose weights the engine \
kept in memory at that budget (their later requests never reach the pool).

$real
"""


def _markdown(results: dict[str, Any]) -> str:
    names = [name for name in POLICY_NAMES if name != "opt"]
    replay_rows, real_rows = [], []
    for row in results["rows"]:
        replay, real = row["replay"], row["real"]
        floors = row["weightdb_beats_baselines"] and (
            row["weightdb_within_opt_floor"] or not _opt_floor_applies(row)
        )
        case = [row["family"], row["trace"], f"{row['budget']:.0%}"]
        replay_rows.append(
            [
                *case,
                *(f"{replay[n]['bytes_vs_opt']:.3f} ({replay[n]['hit_ratio']:.2f})" for n in names),
                f"{row['online_bound']['bytes_vs_opt']:.3f}",
                f"{_mib(replay['opt']['bytes_read'])} ({replay['opt']['hit_ratio']:.2f})",
                yes_no(floors),
            ]
        )
        if not real:
            continue
        resident = sorted({m for n in POLICIES for m in real[n]["resident_models"]})
        real_rows.append(
            [
                *case,
                *(f"{spread(real[n]['seconds'])}, {_mib(real[n]['bytes_read'])}" for n in POLICIES),
                ", ".join(resident) or "none",
            ]
        )
    trace_rows = [
        [
            t["family"],
            t["trace"],
            t["model_requests"],
            t["page_requests"],
            t["distinct_pages"],
            _mib(t["working_set_bytes"]),
        ]
        for t in results["traces"]
    ]
    floors = results["floors"]
    return render(
        REPORT,
        batch_rows=results["batch_rows"],
        traces=markdown_table(
            ["family", "trace", "model requests", "page requests", "pages", "working set MiB"],
            trace_rows,
        ),
        replay=markdown_table(
            ["family", "trace", "budget", *names, "online bound", "opt", "floors met"],
            replay_rows,
        ),
        ours=DEFAULT_POLICY,
        beats=yes_no(floors["weightdb_beats_baselines"]),
        worst_vs_baseline=f"{floors['worst_weightdb_vs_best_baseline']:.3f}",
        opt_floor=OPT_FLOOR,
        within=yes_no(floors["weightdb_within_opt_floor"]),
        worst_vs_opt=f"{floors['worst_weightdb_vs_opt_zipf_25']:.3f}",
        worst_vs_bound=f"{floors['worst_weightdb_vs_online_bound_zipf_25']:.3f}",
        beyond_count=len(floors["zipf_25_cells_beyond_online_policies"]),
        zipf_cells=floors["zipf_25_cells"],
        beyond=", ".join(floors["zipf_25_cells_beyond_online_policies"]) or "none",
        repeats=results["repeats"],
        real=markdown_table(["family", "trace", "budget", *POLICIES, "resident"], real_rows),
    )


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bytes read (replay) against budget, one panel per family and trace, a line per policy."""
    cases = list(dict.fromkeys((row["family"], row["trace"]) for row in rows))
    columns = len({trace for _, trace in cases})
    figure = Figure(figsize=(3.6 * columns, 3 * -(-len(cases) // columns)))
    axes = figure.subplots(-(-len(cases) // columns), columns, squeeze=False).ravel()
    for ax, case in zip(axes, cases, strict=False):
        case_rows = [row for row in rows if (row["family"], row["trace"]) == case]
        budgets = [row["budget"] * 100 for row in case_rows]
        for name in POLICY_NAMES:
            mib = [row["replay"][name]["bytes_read"] / 2**20 for row in case_rows]
            style = "-" if name in POLICIES else "--"
            ax.plot(budgets, mib, marker="o", label=name, linestyle=style)
        bound = [row["online_bound"]["bytes_read"] / 2**20 for row in case_rows]
        ax.plot(budgets, bound, marker="x", label="online bound", linestyle=":", color="black")
        ax.set_title(f"{case[0]}, {case[1]}", fontsize=9)
        ax.set_xlabel("budget, % of working set")
        ax.set_ylabel("MiB read")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f}"
