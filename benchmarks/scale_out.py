"""Scale-out by simulation: how request routing decides the bytes a cluster reads from shared
storage, beyond what one machine can run.

    python -m benchmarks.scale_out [--quick]

Workload: 120 models in 12 lineage families of fine-tunes (``packing.synthetic.
fine_tune_families``: every model shares an embedding, siblings share the base layers they
freeze, retrained layers are private), packed into pages by Two-Stage, 4 MiB per page. A Zipf
trace (skew 0.9) of model requests; each request reads all its model's pages, front to back.

N workers (4, 16, 64), each with its own buffer pool of the same byte budget (10% and 25% of
the trace's working set) running the real ``weightdb`` replacement policy through
``caching.simulate.SimulatedPool``. Routings:

- ``affinity``: ``scaleout.placement.place_models`` (sharing groups from the pages each model
  reads, weighted by request counts; a hot model gets replicas, its requests in turn);
- ``hash``: a stable hash of the model name;
- ``round-robin``: request i to worker i mod N;
- ``serve``: Ray Serve-style multiplexing, counting models: each worker holds as many models as
  its budget fits on average (LRU by model); a request goes to a worker that has its model, else
  any, the less busy of two random candidates (busy = requests among the last N routed).

Reported per case: bytes read from shared storage (all workers), page hit ratio, and load
imbalance (max/mean requests per worker). Floor: affinity reads at most half the bytes of
round-robin at 16 workers with imbalance at most 1.5.
"""

import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from benchmarks.harness import markdown_table, write_results, yes_no
from weightdb.caching.simulate import Budget, SimulatedPool
from weightdb.caching.workload import request_sequence
from weightdb.packing.solve import ONE_PASS
from weightdb.packing.synthetic import fine_tune_families
from weightdb.scaleout.placement import place_models
from weightdb.storage.policies import make_policy

PAGE_BYTES = 4 * 2**20
WORKERS = (4, 16, 64)
BUDGETS = (0.10, 0.25)  # per worker, fraction of the trace's working set
ROUTINGS = ("affinity", "hash", "round-robin", "serve")
SKEW = 0.9
POLICY = "weightdb"
FLOOR_WORKERS = 16
FLOOR_BYTES = 0.5  # affinity bytes / round-robin bytes
FLOOR_IMBALANCE = 1.5

Router = Callable[[int, str], int]
"""(request number, model) -> worker."""


class Workload:
    """Models -> page numbers, page owners and the request sequence."""

    def __init__(self, models: int, families: int, requests: int, seed: int = 0) -> None:
        instance = fine_tune_families(
            models=models, distinct_blocks=models * 150, blocks_per_page=64, families=families
        )
        pages = ONE_PASS["two-stage"](instance)
        page_of = {block: number for number, blocks in enumerate(pages) for block in blocks}
        self.pages = {
            name: sorted({page_of[block] for block in blocks})
            for name, blocks in instance.models.items()
        }
        owners: list[list[str]] = [[] for _ in pages]
        for name, numbers in self.pages.items():
            for page in numbers:
                owners[page].append(name)
        self.owners = [tuple(names) for names in owners]
        self.page_bytes = [PAGE_BYTES] * len(pages)
        self.sequence = request_sequence(sorted(self.pages), requests, SKEW, seed)
        touched = {page for name in set(self.sequence) for page in self.pages[name]}
        self.working_set = len(touched) * PAGE_BYTES

    def counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for name in self.sequence:
            counts[name] = counts.get(name, 0.0) + 1
        return counts


def affinity(workload: Workload, workers: int, budget: int) -> Router:
    placement = place_models(workload.pages, workload.counts(), workers)
    served: dict[str, int] = {}

    def route(number: int, model: str) -> int:
        served[model] = served.get(model, 0) + 1
        return placement.worker_for(model, served[model] - 1)

    return route


def by_hash(workload: Workload, workers: int, budget: int) -> Router:
    def route(number: int, model: str) -> int:
        return int.from_bytes(hashlib.blake2b(model.encode(), digest_size=8).digest()) % workers

    return route


def round_robin(workload: Workload, workers: int, budget: int) -> Router:
    return lambda number, model: number % workers


def serve_multiplexing(workload: Workload, workers: int, budget: int) -> Router:
    mean_model = np.mean([len(pages) * PAGE_BYTES for pages in workload.pages.values()])
    capacity = max(1, int(budget // mean_model))
    loaded: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(workers)]
    recent: deque[int] = deque(maxlen=workers)
    rng = np.random.default_rng(1)

    def route(number: int, model: str) -> int:
        candidates = [w for w in range(workers) if model in loaded[w]] or list(range(workers))
        picks = rng.choice(candidates, size=min(2, len(candidates)), replace=False)
        worker = int(min(picks, key=lambda w: (recent.count(w), w)))
        recent.append(worker)
        cache = loaded[worker]
        cache[model] = None
        cache.move_to_end(model)
        if len(cache) > capacity:
            cache.popitem(last=False)
        return worker

    return route


ROUTERS: dict[str, Callable[[Workload, int, int], Router]] = {
    "affinity": affinity,
    "hash": by_hash,
    "round-robin": round_robin,
    "serve": serve_multiplexing,
}


def simulate(workload: Workload, routing: str, workers: int, budget: int) -> dict[str, Any]:
    """Replay the workload through ``workers`` pools under ``routing``."""
    route = ROUTERS[routing](workload, workers, budget)
    pools = [
        SimulatedPool(
            make_policy(POLICY, workload.owners.__getitem__),
            workload.page_bytes,
            Budget(bytes=budget),
        )
        for _ in range(workers)
    ]
    requests = [0] * workers
    for number, model in enumerate(workload.sequence):
        worker = route(number, model)
        requests[worker] += 1
        pool = pools[worker]
        pool.begin_query(model)
        for page in workload.pages[model]:
            pool.request(page, model)
    hits = sum(pool.hits for pool in pools)
    misses = sum(pool.misses for pool in pools)
    return {
        "routing": routing,
        "workers": workers,
        "bytes_read": sum(pool.bytes_read for pool in pools),
        "hit_ratio": hits / (hits + misses),
        "imbalance": max(requests) / (sum(requests) / workers),
        "requests_per_worker": requests,
    }


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    workload = Workload(models=120, families=12, requests=600 if quick else 3000)
    rows = []
    for fraction in BUDGETS:
        budget = int(fraction * workload.working_set)
        for workers in WORKERS:
            for routing in ROUTINGS:
                row = simulate(workload, routing, workers, budget)
                rows.append({"budget": fraction, **row})
                print(
                    f"budget {fraction:.0%} workers {workers:3d} {routing:12s} "
                    f"{row['bytes_read'] / 2**30:8.2f} GiB  hit {row['hit_ratio']:.3f}  "
                    f"imbalance {row['imbalance']:.2f}",
                    flush=True,
                )
    summary = {
        "quick": quick,
        "models": len(workload.pages),
        "pages": len(workload.page_bytes),
        "page_bytes": PAGE_BYTES,
        "requests": len(workload.sequence),
        "skew": SKEW,
        "policy": POLICY,
        "working_set_bytes": workload.working_set,
        "rows": rows,
        "floors": _floors(rows),
    }
    write_results(out_dir, "scale_out", summary, _markdown(summary))
    _plot(rows, out_dir / "scale_out.png")
    return summary


def _floors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for fraction in BUDGETS:
        case = {
            row["routing"]: row
            for row in rows
            if row["budget"] == fraction and row["workers"] == FLOOR_WORKERS
        }
        ratio = case["affinity"]["bytes_read"] / case["round-robin"]["bytes_read"]
        imbalance = case["affinity"]["imbalance"]
        checks.append(
            {
                "budget": fraction,
                "affinity_over_round_robin_bytes": ratio,
                "affinity_imbalance": imbalance,
                "met": ratio <= FLOOR_BYTES and imbalance <= FLOOR_IMBALANCE,
            }
        )
    return checks


def _markdown(summary: dict[str, Any]) -> str:
    rows = [
        [
            f"{row['budget']:.0%}",
            row["workers"],
            row["routing"],
            f"{row['bytes_read'] / 2**30:.2f}",
            f"{row['hit_ratio']:.3f}",
            f"{row['imbalance']:.2f}",
        ]
        for row in summary["rows"]
    ]
    floors = [
        [
            f"{check['budget']:.0%}",
            f"{check['affinity_over_round_robin_bytes']:.3f}",
            f"{check['affinity_imbalance']:.2f}",
            yes_no(check["met"]),
        ]
        for check in summary["floors"]
    ]
    return "\n\n".join(
        [
            "# Scale-out: routing across workers (simulation)",
            f"{summary['models']} models in lineage families, {summary['pages']} pages of "
            f"{summary['page_bytes'] // 2**20} MiB, {summary['requests']} Zipf requests "
            f"(skew {summary['skew']}), working set "
            f"{summary['working_set_bytes'] / 2**30:.2f} GiB; each worker's pool runs the "
            f"`{summary['policy']}` policy with the budget shown (fraction of the working set, "
            "per worker).",
            markdown_table(
                ["budget", "workers", "routing", "GiB read", "hit ratio", "imbalance"], rows
            ),
            f"Floor at {FLOOR_WORKERS} workers: affinity reads at most {FLOOR_BYTES:.0%} of "
            f"round-robin's bytes, imbalance at most {FLOOR_IMBALANCE}.",
            markdown_table(["budget", "affinity / round-robin bytes", "imbalance", "met"], floors),
        ]
    )


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """GiB read against workers, a panel per budget and a line per routing."""
    figure = Figure(figsize=(4.2 * len(BUDGETS), 3.4))
    axes = figure.subplots(1, len(BUDGETS), squeeze=False).ravel()
    for ax, fraction in zip(axes, BUDGETS, strict=True):
        for routing in ROUTINGS:
            case = [r for r in rows if r["budget"] == fraction and r["routing"] == routing]
            gib = [r["bytes_read"] / 2**30 for r in case]
            ax.plot([r["workers"] for r in case], gib, marker="o", label=routing)
        ax.set_xscale("log", base=2)
        ax.set_title(f"budget {fraction:.0%} of working set per worker", fontsize=9)
        ax.set_xlabel("workers")
        ax.set_ylabel("GiB read from shared storage")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
