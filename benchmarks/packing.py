"""Page packing: pages per algorithm on the netsDB reference instances, and time at scale.

    python -m benchmarks.packing [--quick]

Every reference instance is solved with every algorithm (``optimal`` under a time limit) and
compared with the lower bound ceil(distinct / l), the proved optimum where the solver finished,
and the pages the netsDB artifact reports. Then a synthetic zoo of 100 models and 50,000
distinct blocks (10,000 in quick mode) is packed with every heuristic, and timed.
"""

import argparse
from pathlib import Path

from benchmarks.common import RESULTS_DIR, markdown_table, write_results
from weightdb.packing import ALGORITHMS, PackingError, load_instance, solve
from weightdb.packing.instance import REFERENCE_INSTANCES
from weightdb.packing.synthetic import fine_tune_families

REFERENCE = REFERENCE_INSTANCES
HEURISTICS = [name for name in ALGORITHMS if name != "optimal"]


def run(quick: bool, out_dir: Path) -> dict:
    time_limit = 10.0 if quick else 60.0
    reference = [
        _solve_all(load_instance(path), time_limit) for path in sorted(REFERENCE.glob("*.json"))
    ]
    blocks = 10_000 if quick else 50_000
    synthetic = _solve_all(fine_tune_families(100, blocks, blocks_per_page=64), time_limit)
    results = {"time_limit": time_limit, "reference": reference, "synthetic": synthetic}
    write_results(out_dir, "packing", results, _markdown(results))
    return results


def _solve_all(instance, time_limit: float) -> dict:
    runs = {}
    for algorithm in ALGORITHMS:
        try:
            summary = solve(instance, algorithm, time_limit).summary()
        except PackingError as error:  # the exact model declines instances too large for it
            runs[algorithm] = {"error": str(error)}
            continue
        summary.pop("models")
        runs[algorithm] = summary
    exact = runs["optimal"]
    return {
        "instance": instance.name,
        "models": len(instance.models),
        "distinct_blocks": instance.distinct_blocks,
        "blocks_per_page": instance.blocks_per_page,
        "lower_bound_pages": instance.lower_bound_pages,
        "optimum": exact["pages"] if exact.get("proved_optimal") else None,
        "netsdb_reference_pages": dict(instance.reference_pages),
        "runs": runs,
    }


def _cell(run: dict, optimum: int | None) -> str:
    if "error" in run:
        return "too large"
    gap = f" (+{run['pages'] - optimum})" if optimum is not None and run["pages"] > optimum else ""
    return f"{run['pages']}{gap}"


def _markdown(results: dict) -> str:
    header = ["instance", "lower bound", "netsDB best", *ALGORITHMS]
    rows = []
    for entry in [*results["reference"], results["synthetic"]]:
        reference = entry["netsdb_reference_pages"]
        best = min(reference.values()) if reference else "-"
        cells = [_cell(entry["runs"][name], entry["optimum"]) for name in ALGORITHMS]
        rows.append([entry["instance"], entry["lower_bound_pages"], best, *cells])
    seconds = [
        [entry["instance"], *(_seconds(entry["runs"][name]) for name in ALGORITHMS)]
        for entry in [*results["reference"], results["synthetic"]]
    ]
    copies = [
        [entry["instance"], *(entry["runs"][n].get("copied_blocks", "-") for n in ALGORITHMS)]
        for entry in [*results["reference"], results["synthetic"]]
    ]
    return "\n".join(
        [
            "## Page packing",
            "",
            "Pages per layout; (+k) is the gap to the optimum where `optimal` proved it within "
            f"{results['time_limit']:g} s. netsDB best is the artifact's own count.",
            "",
            markdown_table(header, rows),
            "",
            "Seconds per algorithm (whole solve, including deriving the pages each model reads):",
            "",
            markdown_table(["instance", *ALGORITHMS], seconds),
            "",
            "Copied blocks (distinct blocks stored in more than one page):",
            "",
            markdown_table(["instance", *ALGORITHMS], copies),
        ]
    )


def _seconds(run: dict) -> str:
    return "-" if "error" in run else f"{run['seconds']:.3f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller synthetic instance")
    run(parser.parse_args().quick, RESULTS_DIR)
