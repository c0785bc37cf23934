"""Run benchmark suites and assemble benchmarks/results/REPORT.md.

    python -m benchmarks.run [--quick] [SUITE ...]

The one way to run a suite (``make bench`` runs them all, ``weightdb bench`` calls this).

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
from benchmarks.harness import RESULTS_DIR, machine, markdown_table, render, yes_no

SUITES = [
    "storage",
    "dedup",
    "packing",
    "packing_lineages",
    "engine",
    "caching",
    "serving",
    "budgets",
    "scale",
    "storage_tiers",
    "scale_out",
    "ray_batch",
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


REPORT = """
# weightdb benchmark report

Machine: $platform, $cpus CPUs, $memory_gib GiB; Python $python; versions $versions; \
written $when.

Rerun with `make bench` (or `make bench-quick`); one suite with \
`python -m benchmarks.run SUITE`.

## Floors set by the issues

$floors
"""


def write_report(out_dir: Path) -> None:
    """REPORT.md: the machine, every floor the issues set, then each suite's markdown."""
    facts = machine()
    floors = [[*row[:3], yes_no(row[3])] for row in floors_table(out_dir)]
    parts = [
        render(
            REPORT,
            platform=facts["platform"],
            cpus=facts["cpus"],
            memory_gib=f"{facts['memory_bytes'] / 2**30:.0f}",
            python=facts["python"],
            versions=json.dumps(facts["versions"]),
            when=facts["when"],
            floors=markdown_table(["issue", "floor", "measured", "met"], floors),
        )
    ]
    parts += [
        (out_dir / f"{suite}.md").read_text().strip()
        for suite in SUITES
        if (out_dir / f"{suite}.md").exists()
    ]
    (out_dir / "REPORT.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
