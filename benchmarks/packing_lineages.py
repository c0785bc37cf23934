"""Page packing on lineages: pages, gap to the lower bound and seconds per one-pass packer on
synthetic trees of fine-tunes with thousands of sharing signatures, some with churn.

    python -m benchmarks.run [--quick] packing_lineages

Instances from ``weightdb.packing.synthetic.lineage``; every packer but ``optimal`` (whose exact
model declines every lineage: too many copy patterns), the default one under its default time
limit. Saves JSON, markdown and a plot of seconds against signatures.
"""

from dataclasses import replace
from pathlib import Path

from benchmarks.harness import markdown_table, render, write_results
from weightdb.packing import ALGORITHMS, DEFAULT_ALGORITHM, solve
from weightdb.packing.synthetic import lineage

LINEAGES = [
    (10, 1_000, 0.0),
    (20, 8_000, 0.0),
    (30, 33_000, 0.0),
    (30, 33_000, 0.05),
    (50, 50_000, 0.0),
    (100, 100_000, 0.0),
    (100, 100_000, 0.02),
    (200, 200_000, 0.0),
]
"""(models, distinct blocks, churn): 10 to 200 models, 1,000 to 200,000 blocks."""
QUICK_LINEAGES = LINEAGES[:4]
LINEAGE_ALGORITHMS = [name for name in ALGORITHMS if name != "optimal"]
"""The exact model declines every lineage (too many copy patterns), so it is left out."""
REPORT = """
## Page packing on lineages

Synthetic lineages (`weightdb.packing.synthetic.lineage`): each model fine-tunes a random \
earlier one and rewrites 2-30% of its blocks; churn instances also rewrite the next slice of \
the positions every generation. 64 blocks per page; `$packer` under its default time limit. \
Pages (+gap to the lower bound ceil(distinct / l); * the search stopped at the time limit):

$pages

Seconds per algorithm (whole solve, including deriving the pages each model reads):

$seconds
"""


def run(quick: bool, out_dir: Path) -> dict:
    """Pages, gap to the lower bound and seconds per algorithm on synthetic lineages."""
    entries = []
    for models, blocks, churn in QUICK_LINEAGES if quick else LINEAGES:
        instance = lineage(models, blocks, blocks_per_page=64, churn=churn)
        entry = {
            "instance": instance.name,
            "models": models,
            "churn": churn,
            "distinct_blocks": instance.distinct_blocks,
            "signatures": len(instance.signature_groups()),
            "lower_bound_pages": instance.lower_bound_pages,
            "runs": {},
        }
        for algorithm in LINEAGE_ALGORITHMS:
            # a fresh copy, so every solve pays for the block signatures the instance caches
            result = solve(replace(instance), algorithm)
            entry["runs"][algorithm] = {
                "pages": result.pages,
                "gap_to_lower_bound": result.pages - instance.lower_bound_pages,
                "seconds": result.seconds,
                "copied_blocks": result.layout.copied_blocks,
                "weighted_pages_read": result.weighted_pages_read(),
                "search_finished": result.search_finished,
            }
        print(f"packing: {instance.name} ({entry['signatures']} signatures) done", flush=True)
        entries.append(entry)
    results = {"algorithms": LINEAGE_ALGORITHMS, "lineages": entries}
    write_results(out_dir, "packing_lineages", results, _markdown(results))
    _plot(results, out_dir / "packing_lineages.png")
    return results


def _markdown(results: dict) -> str:
    names = results["algorithms"]
    header = ["instance", "signatures", "lower bound", *names]
    pages, seconds = [], []
    for entry in results["lineages"]:
        runs = entry["runs"]
        first = [entry["instance"], f"{entry['signatures']:,}", entry["lower_bound_pages"]]
        pages.append(first + [_pages(runs[n]) for n in names])
        seconds.append(first + [f"{runs[n]['seconds']:.2f}" for n in names])
    return render(
        REPORT,
        packer=DEFAULT_ALGORITHM,
        pages=markdown_table(header, pages),
        seconds=markdown_table(header, seconds),
    )


def _pages(run: dict) -> str:
    """Pages (+gap), starred when the search stopped at the time limit."""
    stopped = " *" if run.get("search_finished") is False else ""
    return f"{run['pages']} (+{run['gap_to_lower_bound']}){stopped}"


def _plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    entries = sorted(results["lineages"], key=lambda entry: entry["signatures"])
    for name in results["algorithms"]:
        ax.plot(
            [entry["signatures"] for entry in entries],
            [entry["runs"][name]["seconds"] for entry in entries],
            marker="o",
            label=name,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sharing signatures")
    ax.set_ylabel("seconds (whole solve)")
    ax.set_title("Packing lineages: time against signatures", fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
