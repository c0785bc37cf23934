"""Batch inference on Ray, measured on this machine: throughput with 1 and 2 actors, and the bytes
each actor reads from storage under affinity routing against round-robin.

    python -m benchmarks.run ray_batch [--quick]

Workload: the zoo's ``scale`` family at its small size with 8 models (a base embedding-bag MLP
and 7 variants, each sharing about 90% of its blocks with the base), imported with exact
deduplication. A Parquet table of 1,000,000 rows (100,000 in quick mode) of 16 random token ids
each, the model of each row drawn from a Zipf distribution (skew 0.9), written once to the
bench cache dir.

One local Ray cluster with ``num_cpus=2`` runs every job: ``weightdb.ray.predict`` from the
Parquet file to the result materialized in Ray's object store, each actor with the same buffer
pool budget, smaller than the family's stored bytes so that routing decides what is re-read:

- 1 actor (routing does not matter with one);
- 2 actors, ``affinity`` (sharing groups from the catalog, weighted by row counts);
- 2 actors, ``round-robin`` (every model's rows dealt to both actors in turn).

Reported per case: rows per second (median, min and max over the repeats; one in quick mode),
and per actor the rows it predicted, the bytes its pool read from storage, and its page hit
ratio (``weightdb.ray.PoolStatsCollector``). Every job's output must equal the first one's, bit
for bit and in input order, and a random sample of rows must equal single-process
``predict_table``; the suite fails otherwise. No floor: the issue asks for these numbers, not
for a bound on them.
"""

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from benchmarks import families
from benchmarks.harness import markdown_table, render, spread, summary, write_results, yes_no
from weightdb.caching.workload import request_sequence
from weightdb.scaleout.table_predict import open_reader, predict_table
from weightdb.zoo.build import build_family
from weightdb.zoo.manifest import MANIFEST_NAME

MODELS = 8
ROWS = {False: 1_000_000, True: 100_000}
REPEATS = {False: 3, True: 1}
TOKENS = 16
SKEW = 0.9
ROW_GROUP = 50_000
BUDGET_FRACTION = 0.5  # of the family's stored bytes, per actor
SAMPLE = 2_000
BATCH_ROWS = 4096  # rows per map_batches call, as the local predict_table takes them
CASES = ((1, "affinity"), (2, "affinity"), (2, "round-robin"))
FEATURES, MODEL_COLUMN = "input_ids", "model"


def scale_family() -> families.Family:
    """The scale family at its small size with MODELS models, built once into the cache."""
    folder = families.BENCH_DIR / "zoo" / f"scale-small-x{MODELS}"
    if not (folder / MANIFEST_NAME).is_file():
        build_family("scale", folder, "small", seed=0, options={"models": MODELS})
    return families.Family("scale", f"small-x{MODELS}", folder / MANIFEST_NAME)


def input_table(db_path: Path, models: list[str], rows: int) -> Path:
    """A Parquet table of ``rows`` rows (row number, Zipf-drawn model, token ids), written once."""
    path = families.BENCH_DIR / "ray-batch" / f"scale-small-x{MODELS}-{rows}.parquet"
    if path.is_file():
        return path
    with open_reader(db_path) as db:
        vocabulary = db.tensors(models[0])["embedding.weight"].shape[0]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocabulary, (rows, TOKENS), dtype=np.int64)
    table = pa.table(
        {
            "row": np.arange(rows),
            MODEL_COLUMN: request_sequence(models, rows, SKEW, seed=0),
            FEATURES: pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel()), TOKENS),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial, row_group_size=ROW_GROUP)
    partial.rename(path)
    return path


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    import ray

    import weightdb.ray as weightdb_ray

    fam = scale_family()
    db_path, info = families.database(fam, "exact")
    rows = ROWS[quick]
    table_path = input_table(db_path, fam.models, rows)
    budget = int(BUDGET_FRACTION * info["stored_bytes"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        cases, reference = [], None
        for actors, routing in CASES:
            runs = []
            for _ in range(REPEATS[quick]):
                load_before = os.getloadavg()[0]
                collector = weightdb_ray.PoolStatsCollector()
                start = time.perf_counter()
                job = weightdb_ray.predict(
                    weightdb_ray.read_parquet(table_path),
                    db_path,
                    features=FEATURES,
                    model_column=MODEL_COLUMN,
                    actors=actors,
                    budget=budget,
                    batch_rows=BATCH_ROWS,
                    routing=routing,
                    pool_stats=collector,
                ).materialize()
                seconds = time.perf_counter() - start
                result = weightdb_ray.to_table(job)
                del job
                if reference is None:
                    reference = _checked_reference(result, table_path, db_path)
                if not result.equals(reference):
                    raise AssertionError(f"{actors} actors, {routing}: output differs")
                per_actor = collector.per_actor()
                runs.append({"seconds": seconds, "per_actor": per_actor, "load": load_before})
                print(
                    f"  {actors} actor(s) {routing:11s} {rows / seconds:9.0f} rows/s  "
                    + "  ".join(
                        f"actor {a}: {c['rows']} rows {c['bytes_read'] / 2**20:.0f} MiB"
                        for a, c in per_actor.items()
                    )
                    + f"  (load {load_before:.1f})",
                    flush=True,
                )
            cases.append(_case(actors, routing, rows, runs))
    finally:
        ray.shutdown()
    results = {
        "quick": quick,
        "family": fam.label,
        "models": fam.models,
        "rows": rows,
        "skew": SKEW,
        "stored_bytes": info["stored_bytes"],
        "budget_bytes": budget,
        "repeats": REPEATS[quick],
        "sample_rows": SAMPLE,
        "batch_rows": BATCH_ROWS,
        "identical": True,  # every job equal to the first, the sample equal to predict_table
        "load_average": summary([r["load"] for case in cases for r in case["runs"]]),
        "cases": cases,
    }
    write_results(out_dir, "ray_batch", results, _markdown(results))
    _plot(results, out_dir / "ray_batch.png")
    return results


def _checked_reference(result: pa.Table, table_path: Path, db_path: Path) -> pa.Table:
    """The first job's output, once it is shown to be the input in order plus predictions that
    equal single-process ``predict_table`` on a random sample of rows."""
    table = pq.read_table(table_path)
    if not result.drop_columns(["prediction"]).equals(table):
        raise AssertionError("the Ray output is not the input's rows in input order")
    sample = np.sort(np.random.default_rng(1).choice(table.num_rows, SAMPLE, replace=False))
    local = predict_table(db_path, table.take(sample), FEATURES, model_column=MODEL_COLUMN)
    if not local.equals(result.take(sample)):
        raise AssertionError("the Ray output differs from predict_table on the sample")
    return result


def _case(actors: int, routing: str, rows: int, runs: list[dict]) -> dict[str, Any]:
    """Throughput over the repeats and each actor's counters (median over the repeats)."""
    per_actor = {}
    for actor in sorted(runs[0]["per_actor"]):
        counters = [run["per_actor"][actor] for run in runs]
        hits = [c["hits"] / max(1, c["hits"] + c["misses"]) for c in counters]
        per_actor[actor] = {
            "rows": summary([c["rows"] for c in counters]),
            "bytes_read": summary([c["bytes_read"] for c in counters]),
            "hit_ratio": summary(hits),
        }
    total_bytes = [sum(c["bytes_read"] for c in run["per_actor"].values()) for run in runs]
    return {
        "actors": actors,
        "routing": routing,
        "rows_per_second": summary([rows / run["seconds"] for run in runs], with_runs=True),
        "bytes_read": summary(total_bytes),
        "per_actor": per_actor,
        "runs": runs,
    }


REPORT = """
# Batch inference on Ray (this machine)

$rows rows of $family ($model_count models, $stored MiB stored after exact deduplication), \
each row's model drawn Zipf (skew $skew); one local Ray cluster, `num_cpus=2`; every actor's \
buffer pool has a budget of $budget MiB ($fraction of the stored bytes) and takes batches of \
$batch_rows rows. Median (min-max) over \
$repeats repeat(s). Load average during the runs: $load (the machine is shared with other jobs; \
throughput moves with it).

$table

Per-actor columns are medians over the repeats, actor 0 / actor 1 (the JSON has every run).

- rows/s: input rows predicted per second, from reading the Parquet file to the result \
materialized in Ray's object store (numbering, routing, prediction and the sort back into \
input order included).
- MiB read: bytes each actor's buffer pool read from storage (the stored size of every page it \
missed), summed over actors in the last column; what a shared filesystem would serve.
- hit ratio: page requests each actor's pool served from memory.
- rows: input rows each actor predicted (load balance).
- 2 actors against 1 (affinity): $speedup the rows per second; both actors share 2 CPUs \
with the driver, Ray's tasks and the machine's other jobs. With 1 actor every routing is the same.
- Affinity against round-robin with 2 actors: affinity reads $affinity_ratio of \
round-robin's bytes.
- Identical: every job's output equals the first one's bit for bit, in input order, and a \
sample of $sample rows equals single-process `predict_table`: $identical.
"""


def _markdown(results: dict[str, Any]) -> str:
    rows = []
    for case in results["cases"]:
        actors = case["per_actor"].items()
        rows.append(
            [
                case["actors"],
                case["routing"],
                spread(case["rows_per_second"], "{:,.0f}"),
                " / ".join(f"{c['rows']['median']:,.0f}" for _, c in actors),
                " / ".join(f"{c['bytes_read']['median'] / 2**20:.0f}" for _, c in actors),
                " / ".join(f"{c['hit_ratio']['median']:.3f}" for _, c in actors),
                spread(case["bytes_read"], "{:.0f}", 2**-20),
            ]
        )
    header = ["actors", "routing", "rows/s", "rows per actor", "MiB read per actor"]
    header += ["hit ratio per actor", "MiB read, all actors"]
    by_routing = {c["routing"]: c for c in results["cases"] if c["actors"] == 2}
    ratio = (
        by_routing["affinity"]["bytes_read"]["median"]
        / by_routing["round-robin"]["bytes_read"]["median"]
    )
    one = next(c for c in results["cases"] if c["actors"] == 1)
    speedup = by_routing["affinity"]["rows_per_second"]["median"] / one["rows_per_second"]["median"]
    return render(
        REPORT,
        rows=f"{results['rows']:,}",
        family=results["family"],
        model_count=len(results["models"]),
        stored=f"{results['stored_bytes'] / 2**20:.1f}",
        skew=results["skew"],
        budget=f"{results['budget_bytes'] / 2**20:.1f}",
        fraction=f"{BUDGET_FRACTION:.0%}",
        repeats=results["repeats"],
        batch_rows=f"{results['batch_rows']:,}",
        load=spread(results["load_average"], "{:.1f}"),
        table=markdown_table(header, rows),
        affinity_ratio=f"{ratio:.0%}",
        speedup=f"{speedup:.2f}x",
        sample=f"{results['sample_rows']:,}",
        identical=yes_no(results["identical"]),
    )


def _plot(results: dict[str, Any], path: Path) -> None:
    """Rows per second per case (min-max bars), and MiB read per actor per routing."""
    figure = Figure(figsize=(8.4, 3.4))
    speed, reads = figure.subplots(1, 2)
    cases = results["cases"]
    labels = [f"{c['actors']} actor{'s' * (c['actors'] > 1)}\n{c['routing']}" for c in cases]
    medians = [c["rows_per_second"]["median"] for c in cases]
    errors = [
        [m - c["rows_per_second"]["min"] for m, c in zip(medians, cases, strict=True)],
        [c["rows_per_second"]["max"] - m for m, c in zip(medians, cases, strict=True)],
    ]
    speed.bar(range(len(cases)), medians, yerr=errors, capsize=4)
    speed.set_xticks(range(len(cases)), labels, fontsize=8)
    speed.set_ylabel("rows per second")
    speed.set_title(f"{results['rows']:,} rows, num_cpus=2", fontsize=9)
    two = [c for c in cases if c["actors"] == 2]
    width = 0.8 / len(two)
    for k, case in enumerate(two):
        actors = sorted(case["per_actor"])
        mib = [case["per_actor"][a]["bytes_read"]["median"] / 2**20 for a in actors]
        reads.bar(np.arange(len(actors)) + k * width, mib, width, label=case["routing"])
    reads.set_xticks(np.arange(2) + width * (len(two) - 1) / 2, ["actor 0", "actor 1"])
    reads.set_ylabel("MiB read from storage")
    reads.set_title(f"2 actors, {results['budget_bytes'] / 2**20:.1f} MiB pool each", fontsize=9)
    reads.set_ylim(top=reads.get_ylim()[1] * 1.2)  # room for the legend above the bars
    reads.legend(fontsize=8, loc="upper center", ncol=len(two))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
