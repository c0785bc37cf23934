"""Replacement policies against Belady's optimum on Zipf and shifting-popularity workloads.

Families are synthetic for now (a base shared by every model, groups shared by subsets, private
pages, a few short tail pages); real zoo families and recorded serving traces replace them later.
Budgets are fractions of the deduplicated working set in bytes. Floors checked: ``weightdb``
reads no more bytes than the best of lru/mru/lfu/netsdb-cost everywhere, and at most 1.2x the
bytes ``opt`` reads on the Zipf traces at 25%.
"""

import json
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from weightdb.caching.simulate import POLICY_NAMES, Budget, simulate
from weightdb.caching.trace import Trace
from weightdb.caching.workload import shifting_trace, zipf_trace

BUDGETS = (0.10, 0.25, 0.50)
SKEWS = (0.6, 0.9, 1.2)
SHIFTING_SKEW = 0.9
BASELINES = ("lru", "mru", "lfu", "netsdb-cost")
OPT_FLOOR = 1.2  # weightdb bytes / opt bytes allowed on Zipf traces at 25%
PAGE = 4 * 1024 * 1024
TAIL = 1024 * 1024


@dataclass(frozen=True)
class FamilyShape:
    name: str
    models: int
    base_pages: int
    groups: int
    group_pages: int
    private_pages: int


FAMILIES = (
    FamilyShape("classifiers", models=24, base_pages=12, groups=4, group_pages=4, private_pages=2),
    FamilyShape("finetunes", models=12, base_pages=8, groups=3, group_pages=6, private_pages=6),
)


def synthetic_family(shape: FamilyShape, seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Model -> pages in reading order (base, group, private, tail), and page -> bytes."""
    rng = np.random.default_rng(seed)
    base = [f"base-{i}" for i in range(shape.base_pages)]
    groups = [[f"g{g}-{i}" for i in range(shape.group_pages)] for g in range(shape.groups)]
    family = {}
    for m in range(shape.models):
        private = [f"m{m}-{i}" for i in range(shape.private_pages)]
        family[f"{shape.name}-{m}"] = [
            *base,
            *groups[rng.integers(shape.groups)],
            *private,
            f"m{m}-tail",
        ]
    page_bytes = {
        page: TAIL if page.endswith("tail") else PAGE for pages in family.values() for page in pages
    }
    return family, page_bytes


def _traces(shape: FamilyShape, model_requests: int, seed: int) -> dict[str, Trace]:
    family, page_bytes = synthetic_family(shape, seed)
    traces = {
        f"zipf-{skew}": zipf_trace(family, page_bytes, model_requests, skew, seed) for skew in SKEWS
    }
    traces[f"shifting-{SHIFTING_SKEW}"] = shifting_trace(
        family, page_bytes, model_requests, SHIFTING_SKEW, seed
    )
    return traces


def run(quick: bool, out_dir: pathlib.Path) -> dict[str, Any]:
    """Simulate every policy on every family, trace and budget; write json, md and a plot."""
    model_requests = 400 if quick else 3000
    rows = []
    for seed, shape in enumerate(FAMILIES):
        for trace_name, trace in _traces(shape, model_requests, seed).items():
            working_set = trace.working_set_bytes
            for fraction in BUDGETS:
                budget = Budget(bytes=int(working_set * fraction))
                results = {name: simulate(trace, name, budget) for name in POLICY_NAMES}
                rows.append(_row(shape.name, trace_name, fraction, results))
    summary = {
        "model_requests": model_requests,
        "budgets": list(BUDGETS),
        "rows": rows,
        "floors": {
            "weightdb_beats_baselines": all(row["weightdb_beats_baselines"] for row in rows),
            "weightdb_within_opt_floor": all(
                row["weightdb_within_opt_floor"]
                for row in rows
                if row["budget"] == 0.25 and row["trace"].startswith("zipf")
            ),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "caching.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "caching.md").write_text(_markdown(summary))
    _plot(rows, out_dir / "caching.png")
    return summary


def _row(family: str, trace: str, fraction: float, results: dict) -> dict[str, Any]:
    opt_bytes = results["opt"].bytes_read
    best_baseline = min(results[name].bytes_read for name in BASELINES)
    ours = results["weightdb"].bytes_read
    return {
        "family": family,
        "trace": trace,
        "budget": fraction,
        "policies": {
            name: {
                **result.to_json(),
                "bytes_vs_opt": result.bytes_read / opt_bytes if opt_bytes else 1.0,
            }
            for name, result in results.items()
        },
        "weightdb_beats_baselines": ours <= best_baseline,
        "weightdb_within_opt_floor": ours <= OPT_FLOOR * opt_bytes,
    }


def _markdown(summary: dict[str, Any]) -> str:
    names = [name for name in POLICY_NAMES if name != "opt"]
    lines = [
        "# Caching: bytes read relative to Belady's optimum",
        "",
        f"{summary['model_requests']} model requests per trace; budget = share of the "
        "deduplicated working set in bytes. Cells: bytes read / opt's bytes read (hit ratio).",
        "",
        "| family | trace | budget | " + " | ".join(names) + " | opt hit ratio | floors met |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in summary["rows"]:
        policies = row["policies"]
        cells = [
            f"{policies[name]['bytes_vs_opt']:.3f} ({policies[name]['hit_ratio']:.2f})"
            for name in names
        ]
        floors = row["weightdb_beats_baselines"] and (
            row["weightdb_within_opt_floor"]
            or not (row["budget"] == 0.25 and row["trace"].startswith("zipf"))
        )
        lines.append(
            f"| {row['family']} | {row['trace']} | {row['budget']:.0%} | "
            + " | ".join(cells)
            + f" | {row['policies']['opt']['hit_ratio']:.2f} | {'yes' if floors else 'NO'} |"
        )
    floors = summary["floors"]
    lines += [
        "",
        f"- weightdb reads no more than the best baseline everywhere: "
        f"{'yes' if floors['weightdb_beats_baselines'] else 'NO'}",
        f"- weightdb within {OPT_FLOOR}x opt on Zipf traces at 25%: "
        f"{'yes' if floors['weightdb_within_opt_floor'] else 'NO'}",
        "",
    ]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    names = [name for name in POLICY_NAMES if name != "opt"]
    cases = sorted({(row["family"], row["trace"]) for row in rows})
    fig = Figure(figsize=(8, 2.4 * len(cases)))
    axes = fig.subplots(len(cases), 1, sharex=True, squeeze=False)
    width = 0.8 / len(names)
    for ax, case in zip(axes[:, 0], cases, strict=True):
        case_rows = [row for row in rows if (row["family"], row["trace"]) == case]
        for i, name in enumerate(names):
            ratios = [row["policies"][name]["bytes_vs_opt"] for row in case_rows]
            ax.bar(np.arange(len(case_rows)) + i * width, ratios, width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel("bytes / opt")
        ax.set_title(f"{case[0]}, {case[1]}", fontsize=9)
    axes[-1, 0].set_xticks(
        np.arange(len(BUDGETS)) + 0.4 - width / 2, [f"{b:.0%} budget" for b in BUDGETS]
    )
    axes[0, 0].legend(ncol=len(names), fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
