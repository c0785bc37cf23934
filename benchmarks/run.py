"""Run benchmark suites and assemble benchmarks/results/REPORT.md.

    python -m benchmarks.run [--quick] [SUITE ...]

Each suite is a module here with ``run(quick, out_dir) -> dict`` that writes
``<suite>.json`` and ``<suite>.md``; the report stitches the markdown together with the
machine facts, so one file answers "what did the last run measure, and where".
"""

import argparse
import importlib
import json
import time
from pathlib import Path

from benchmarks.floors import floors_table
from benchmarks.harness import RESULTS_DIR, machine, markdown_table

SUITES = [
    "storage",
    "dedup",
    "packing",
    "engine",
    "caching",
    "serving",
    "budgets",
    "scale",
    "storage_tiers",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", default=SUITES, help=f"any of {SUITES}")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose from {SUITES}")
    # Quick runs go beside, so they never overwrite the full results kept in the repository.
    out_dir = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    for suite in args.suites:
        print(f"== {suite}", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{suite}").run(args.quick, out_dir)
        print(f"== {suite} done in {time.perf_counter() - start:.0f}s", flush=True)
    write_report(out_dir)


def write_report(out_dir: Path) -> None:
    facts = machine()
    parts = [
        "# weightdb benchmark report",
        "",
        f"Machine: {facts['platform']}, {facts['cpus']} CPUs, "
        f"{facts['memory_bytes'] / 2**30:.0f} GiB; Python {facts['python']}; "
        f"versions {json.dumps(facts['versions'])}; written {facts['when']}.",
        "",
        "Rerun with `make bench` (or `make bench-quick`); one suite with "
        "`python -m benchmarks.run SUITE`.",
        "",
        "## Floors set by the issues",
        "",
        markdown_table(
            ["issue", "floor", "measured", "met"],
            [
                [*row[:3], {True: "yes", False: "NO", None: "n/a at this size"}[row[3]]]
                for row in floors_table(out_dir)
            ],
        ),
    ]
    for suite in SUITES:
        md = out_dir / f"{suite}.md"
        if md.exists():
            parts += ["", md.read_text().strip()]
    (out_dir / "REPORT.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
