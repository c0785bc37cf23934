"""Page packing: pages per algorithm on the netsDB reference instances and the zoo families,
time at scale, and what ``db.pack()`` does to cold inference.

    python -m benchmarks.run [--quick] packing

Every instance is solved with every algorithm (``optimal`` under a time limit) and compared
with the lower bound ceil(distinct / l), the proved optimum where the solver finished, and the
pages the netsDB artifact reports. Instances: the reference ones; a synthetic zoo of 100 models
and 50,000 distinct blocks (10,000 in quick mode); and the database of each zoo family after
exact deduplication (import) and after weightdb's approximate deduplication at 1%, whose
instance is model -> distinct block ids with l = page size // (block bytes in float32).

Cold inference: per model, one prediction on a small test batch on a fresh connection
(unbounded pool, in a process of its own) after the pages folder is dropped from the OS cache,
on a copy of the database in import order and on a copy after ``db.pack("weightdb")`` (copies
of shared blocks allowed), back to back; bytes read from storage and latency, median with min
and max, as the ratio packed / unpacked.
Lineage-shaped instances have a suite of their own, ``packing_lineages``.
"""

import shutil
from dataclasses import replace
from pathlib import Path

import weightdb
from benchmarks import families
from benchmarks.harness import markdown_table, render, spread, timed, write_results
from weightdb.memory_limit import drop_page_cache
from weightdb.packing import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    Instance,
    PackingError,
    load_instance,
    solve,
)
from weightdb.packing.instance import REFERENCE_INSTANCES
from weightdb.packing.synthetic import fine_tune_families
from weightdb.storage.repack import blocks_per_page
from weightdb.units import format_size

REFERENCE = REFERENCE_INSTANCES
BOTH = ("exact", "weightdb")
QUICK_FAMILIES = [
    ("digits-cnn", "small", BOTH),
    ("xml-mlp", "small", BOTH),
    ("text-embedding", "small", BOTH),
]
FULL_FAMILIES = [
    ("digits-cnn", "full", BOTH),
    ("text-embedding", "full", BOTH),
    ("minilm-finetunes", "small", ("exact",)),
    ("xml-mlp", "full", ("exact",)),
]
"""(family, size, dedup tiers). Approximate dedup evaluates every model many times: for the
transformer fine-tunes and the 3.8 GiB xml-mlp that takes too long for a benchmark run."""
BATCH_ROWS = 4
PACK_ALGORITHM = DEFAULT_ALGORITHM
"""What the cold-inference runs pack with: the database stores its copies of shared blocks."""


def run(quick: bool, out_dir: Path) -> dict:
    time_limit = 10.0 if quick else 60.0
    reference = [
        _solve_all(load_instance(path), time_limit) for path in sorted(REFERENCE.glob("*.json"))
    ]
    print("packing: reference instances done", flush=True)
    blocks = 10_000 if quick else 50_000
    synthetic = _solve_all(fine_tune_families(100, blocks, blocks_per_page=64), time_limit)
    print("packing: synthetic instance done", flush=True)
    repeats = 2 if quick else 3
    zoo = []
    for name, size, tiers in QUICK_FAMILIES if quick else FULL_FAMILIES:
        fam = families.family(name, size)
        for dedup in tiers:
            zoo.append(_zoo_entry(fam, dedup, time_limit, repeats))
    results = {
        "time_limit": time_limit,
        "reference": reference,
        "synthetic": synthetic,
        "zoo": zoo,
    }
    write_results(out_dir, "packing", results, _markdown(results))
    return results


def _solve_all(instance: Instance, time_limit: float) -> dict:
    runs = {}
    for algorithm in ALGORITHMS:
        try:
            # a fresh copy, so every solve pays for the block signatures the instance caches
            summary = solve(replace(instance), algorithm, time_limit).summary()
        except PackingError as error:  # the exact model declines instances too large for it
            runs[algorithm] = {"error": str(error)}
            continue
        summary["pages_read"] = {m: v["pages_read"] for m, v in summary.pop("models").items()}
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


def _zoo_entry(fam: families.Family, dedup: str, time_limit: float, repeats: int) -> dict:
    """The family database's packing instance under every algorithm, then cold inference in
    the import-order layout and after ``db.pack(PACK_ALGORITHM)``, each on its own copy."""
    source, info = families.database(fam, dedup)
    with weightdb.connect(source, create=False) as db:
        instance = Instance.from_models(
            db.store.catalog.model_blocks(), blocks_per_page(db.store), name=f"{fam.label} {dedup}"
        )
    solved = _solve_all(instance, time_limit)
    print(f"packing: {instance.name} solved", flush=True)
    unpacked = families.copy_database(source, families.BENCH_DIR / "packing-unpacked")
    packed = families.copy_database(source, families.BENCH_DIR / "packing-packed")
    with weightdb.connect(packed, create=False) as db:
        report = db.pack(PACK_ALGORITHM)
    cold = {}
    for model in fam.models:  # both layouts back to back, so machine noise hits them alike
        before = families.isolated(_cold_predict, unpacked, model, fam, repeats)
        after = families.isolated(_cold_predict, packed, model, fam, repeats)
        cold[model] = {
            "unpacked": before,
            "packed": after,
            "bytes_ratio": after["bytes_read"] / before["bytes_read"],
            "latency_ratio": after["seconds"]["median"] / before["seconds"]["median"],
        }
    print(f"packing: {instance.name} cold inference done", flush=True)
    for copy in (unpacked, packed):
        shutil.rmtree(copy)
    settings = fam.settings
    return {
        "family": fam.label,
        "dedup": dedup,
        "database": info,
        "block_shape": [settings.block_rows, settings.block_cols],
        "page_size": settings.page_size,
        **solved,
        "repack": report.to_json(),
        "cold": cold,
    }


def _cold_predict(path: Path, model: str, fam: families.Family, repeats: int) -> dict:
    """One prediction on a fresh connection with the pages folder dropped from the OS cache
    (``repeats`` times; run in a process of its own, see ``families.isolated``)."""
    inputs = fam.test_batch(model, BATCH_ROWS)
    connections = []

    def fresh() -> None:
        while connections:
            connections.pop().close()
        connections.append(weightdb.connect(path, create=False, budget=None))
        drop_page_cache(path / "pages")

    seconds = timed(lambda: connections[0].predict(model, inputs), repeats, before=fresh)
    bytes_read = connections[0].pool.stats().bytes_read
    connections.pop().close()
    return {"seconds": seconds, "bytes_read": bytes_read}


def _cell(run: dict, optimum: int | None) -> str:
    if "error" in run:
        return "too large"
    gap = f" (+{run['pages'] - optimum})" if optimum is not None and run["pages"] > optimum else ""
    return f"{run['pages']}{gap}"


REPORT = """
## Page packing

Pages per layout; (+k) is the gap to the optimum where `optimal` proved it within \
$time_limit s. netsDB best is the artifact's own count. Zoo rows are family databases after \
exact (import) or weightdb approximate (1%) deduplication; as imported: the pages their blocks \
occupy in import order, before `db.pack()`. Only greedy1 stores every block once; `db.pack()` \
stores any algorithm's copies.

$pages

Pages read per model on the zoo families, mean (max) over the family's models:

$reads

Seconds per algorithm (whole solve, including deriving the pages each model reads):

$seconds

Copied blocks (distinct blocks stored in more than one page):

$copies

$cold
"""
COLD_REPORT = """
### Cold inference before and after `db.pack()` ($algorithm)

What the repack stored (copied blocks: distinct blocks on more than one page):

$stored

One prediction of $batch_rows test rows on a fresh connection, pages dropped from the OS \
cache before each run; latency median (min-max) in ms.

$cold
"""


def _markdown(results: dict) -> str:
    instances = [*results["reference"], results["synthetic"], *results["zoo"]]
    header = ["instance", "lower bound", "netsDB best", "as imported", *ALGORITHMS]
    rows = []
    for entry in instances:
        reference = entry["netsdb_reference_pages"]
        best = min(reference.values()) if reference else "-"
        imported = entry["repack"]["pages_before"] if "repack" in entry else "-"
        cells = [_cell(entry["runs"][name], entry["optimum"]) for name in ALGORITHMS]
        rows.append([entry["instance"], entry["lower_bound_pages"], best, imported, *cells])
    seconds = [[e["instance"], *(_seconds(e["runs"][n]) for n in ALGORITHMS)] for e in instances]
    copies = [
        [e["instance"], *(e["runs"][n].get("copied_blocks", "-") for n in ALGORITHMS)]
        for e in instances
    ]
    reads = [
        [e["instance"], e["models"], *(_mean_reads(e["runs"][n]) for n in ALGORITHMS)]
        for e in results["zoo"]
    ]
    return render(
        REPORT,
        time_limit=f"{results['time_limit']:g}",
        pages=markdown_table(header, rows),
        reads=markdown_table(["instance", "models", *ALGORITHMS], reads),
        seconds=markdown_table(["instance", *ALGORITHMS], seconds),
        copies=markdown_table(["instance", *ALGORITHMS], copies),
        cold=_cold_markdown(results["zoo"]),
    )


def _cold_markdown(zoo: list[dict]) -> str:
    rows, stored = [], []
    for entry in zoo:
        repack = entry["repack"]
        stored.append(
            [
                entry["family"],
                entry["dedup"],
                f"{repack['pages_before']} -> {repack['pages_after']}",
                repack["copied_blocks"],
                f"{format_size(repack['page_bytes_before'])} -> "
                f"{format_size(repack['page_bytes_after'])}",
            ]
        )
        before, after = repack["pages_read_before"], repack["pages_read_after"]
        for model, cold in entry["cold"].items():
            rows.append(
                [
                    entry["family"],
                    entry["dedup"],
                    model,
                    f"{before[model]['pages']} -> {after[model]['pages']}",
                    format_size(cold["unpacked"]["bytes_read"]),
                    format_size(cold["packed"]["bytes_read"]),
                    f"{cold['bytes_ratio']:.2f}",
                    spread(cold["unpacked"]["seconds"], "{:.1f}", 1e3),
                    spread(cold["packed"]["seconds"], "{:.1f}", 1e3),
                    f"{cold['latency_ratio']:.2f}",
                ]
            )
    header = ["family", "dedup", "model", "pages read", "read unpacked", "read packed"]
    header += ["bytes packed/unpacked", "ms unpacked", "ms packed", "latency packed/unpacked"]
    return render(
        COLD_REPORT,
        algorithm=PACK_ALGORITHM,
        stored=markdown_table(["family", "dedup", "pages", "copied blocks", "page bytes"], stored),
        batch_rows=BATCH_ROWS,
        cold=markdown_table(header, rows),
    )


def _mean_reads(run: dict) -> str:
    if "error" in run:
        return "-"
    reads = list(run["pages_read"].values())
    return f"{sum(reads) / len(reads):.1f} ({max(reads)})"


def _seconds(run: dict) -> str:
    return "-" if "error" in run else f"{run['seconds']:.3f}"
