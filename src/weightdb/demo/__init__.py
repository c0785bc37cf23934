"""`weightdb demo`: the tour a new user runs first, in four sections, each number measured in
this run and printed with what it means.

1. Storage: a family of fine-tuned text classifiers imported, stored bytes against logical
   bytes after each tier (exact, lossless, approximate), and every model's test accuracy
   before and after; then a larger family of eight variants, the one served next.
2. Serving out of memory: one Zipf workload over the eight variants, served by weightdb and by
   PyTorch loading whole models on demand, under a memory limit smaller than the models, and
   again with room for all of them (where PyTorch is expected to win).
3. SQL: a table scored by every variant in one query.
4. HTTP: one KServe v2 request to the server started in this process.

``--scale small`` runs the same sections on small families in about a minute (the tests).
"""

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from weightdb.database import Database, connect
from weightdb.demo.query import one_kserve_request, score_in_sql
from weightdb.demo.serving import Served, first_answers_differ, serve_both
from weightdb.demo.storage import (
    TierBytes,
    compress_family,
    deduplicate_family,
    import_family,
)
from weightdb.memory_limit import available as cgroups_available
from weightdb.units import format_size

MAX_DROP = 0.01  # each model's allowed accuracy drop, as a fraction: one point
SERVED_PREFIX = "mlp-"  # the served family's models are called mlp-base, mlp-variant-001, ...


@dataclass(frozen=True)
class Scale:
    """The families and workload of one run of the tour."""

    classifiers: str  # a zoo family with accuracy, built at its small size
    served_size: str  # the size of the zoo's scale family, and its options
    served_options: dict = field(default_factory=dict)
    requests: int = 96  # requests per system and memory limit
    rows_per_request: int = 8
    tight_share: float = 0.25  # the tight limit, as a share of the served family's files


SCALES = {
    "full": Scale("text-embedding", "full", {"total": "1GiB", "models": 8}),
    "small": Scale("digits-cnn", "small", {"total": "32MiB", "models": 8}, requests=24),
}


def run_demo(path: Path, console: Console, scale: str = "full") -> None:
    """Run the tour into a fresh database at ``path``; zoo builds are cached beside it."""
    chosen = SCALES[scale]
    if path.exists():
        shutil.rmtree(path)
    zoo = path.parent / f"{path.name}-zoo"
    say = _Printer(console)
    classifiers = _family(chosen.classifiers, "small", {}, zoo, say)
    served = _family("scale", chosen.served_size, chosen.served_options, zoo, say)
    for model in served["models"]:  # "base" is taken by the classifiers
        model["name"] = f"{SERVED_PREFIX}{model['name']}"
    with connect(path) as db:
        _storage(db, classifiers, served, say)
    _serving(path, served, chosen, say)
    with connect(path) as db:
        _sql(db, served, chosen, say)
        _http(db, served, chosen, say)
    say.line(f"\nThe database is at {path}; try `weightdb --db {path} ls` or `stats`.")


class _Printer:
    """Plain lines (no markup: model names and SQL keep their brackets)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def line(self, text: str = "") -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def section(self, title: str) -> None:
        self.console.rule(title, characters="=")


def _family(name: str, size: str, options: dict, zoo: Path, say: _Printer) -> dict:
    from weightdb.zoo.build import build_family

    out = zoo / f"{name}-{size}"
    say.line(f"building the zoo's {name} family ({size}) in {out}; cached after the first run")
    result = build_family(name, out, size=size, options=options)
    family = json.loads(result.manifest.read_text())
    family["dir"] = result.manifest.parent
    return family


def _storage(db: Database, classifiers: dict, served: dict, say: _Printer) -> None:
    count = len(classifiers["models"])
    say.section(f"1. Storage: {count} fine-tuned classifiers of the {classifiers['name']} family")
    say.line(classifiers["description"])
    say.line(f"Shared by construction: {classifiers['shared_by_construction']}")
    exact = import_family(db, classifiers)
    lossless = compress_family(db, exact)
    approximate, report = deduplicate_family(db, classifiers, lossless, MAX_DROP)
    say.line()
    say.line(
        f"  {'logical':<14} {format_size(exact.logical_bytes):>11}          the weights of all "
        f"{count} models, as {count} separate files hold them"
    )
    for tier in (exact, lossless, approximate):
        _tier_line(tier, say)
    for note in report.notes:
        say.line(f"  note: {note}")
    if approximate.stored_bytes == lossless.stored_bytes:
        say.line(
            "  approximate sharing saved nothing here: a block is replaced only where the "
            "validation split can show every model stays within its budget"
        )
    say.line()
    say.line(
        "Test accuracy of every model before and after (the test split: deduplication decided "
        "on the validation split and never saw it):"
    )
    for name, model in report.models.items():
        change = model.test_after - model.test_before
        say.line(
            f"  {name:<28} accuracy {model.test_before:.4f} -> {model.test_after:.4f} "
            f"({change:+.2%}, budget -{MAX_DROP:.0%}); {model.blocks_replaced} blocks replaced"
        )
    worst = min((m.test_after - m.test_before for m in report.models.values()), default=0.0)
    if worst >= 0:
        say.line(f"  worst change {worst:+.2%}: no model lost accuracy on data dedup never saw")
    else:
        say.line(f"  worst change {worst:+.2%}: the most any model lost on data dedup never saw")
    say.line()
    say.line(f"Next, the family served in section 2: {served['description']}")
    say.line(f"Shared by construction: {served['shared_by_construction']}")
    variants = import_family(db, served)
    say.line(
        f"  {'logical':<14} {format_size(variants.logical_bytes):>11}          the weights of "
        f"all {len(served['models'])} variants as files"
    )
    _tier_line(variants, say)
    say.line(
        "  (random weights, so no accuracy to keep: only the exact tier, and its blocks stay "
        "raw, so serving decodes nothing)"
    )


def _tier_line(tier: TierBytes, say: _Printer) -> None:
    say.line(
        f"  {tier.tier:<14} {format_size(tier.stored_bytes):>11} {tier.ratio:6.2f}x  {tier.meaning}"
    )


def _serving(path: Path, served: dict, scale: Scale, say: _Printer) -> None:
    files = sum(m["bytes"] for m in served["models"])
    count = len(served["models"])
    say.section(f"2. Serving {count} models when they do not fit in memory")
    limited = cgroups_available()
    say.line(
        f"{scale.requests} requests of {scale.rows_per_request} rows, Zipf(0.9) over the "
        f"{count} variants ({format_size(files)} of model files), served one at a time by each "
        "system in its own process on one thread, its files dropped from the OS cache first."
    )
    say.line(
        "  weightdb: a buffer pool of the limit, reading the blocks each request needs; "
        "PyTorch: each model's safetensors file loaded whole on demand, an LRU of the models "
        "that fit the limit."
    )
    if limited:
        say.line(
            "  memory limit: a memory cgroup per process (root, cgroup v1), the limit plus the "
            "process's idle resident set; it counts the OS page cache too."
        )
    else:
        say.line(
            "  memory limit: no memory cgroup (that needs root and the cgroup v1 memory "
            "controller), so the limit is weightdb's pool budget and PyTorch's LRU capacity; "
            "neither bounds the OS page cache."
        )
    tight = max(int(files * scale.tight_share), max(m["bytes"] for m in served["models"]))
    scenarios = (
        (f"{scale.tight_share:.0%} of the models fit", tight),
        ("all models fit", files),
    )
    work = path.parent / f"{path.name}-serving"
    for title, budget in scenarios:
        results = serve_both(path, served, budget, scale.requests, scale.rows_per_request, work)
        say.line()
        say.line(f"Memory limit {format_size(budget)}: {title}")
        for served_by in results.values():
            _served_line(served_by, say)
        _verdict(results, say)
        difference = first_answers_differ(work)
        if difference is not None:
            say.line(
                f"  same answers: the first request's outputs differ by at most {difference:.1e}"
            )
    shutil.rmtree(work, ignore_errors=True)
    say.line(
        f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other work on the "
        "machine slows both systems alike; throughput is requests per second of serving, p50 "
        "and p99 the median and 99th percentile request latency)"
    )


def _served_line(served: Served, say: _Printer) -> None:
    limit = "" if served.limit_bytes is None else f"; cgroup {format_size(served.limit_bytes)}"
    if served.error:
        say.line(f"  {served.system:<9} failed: {served.error}{limit}")
        return
    cold = f"{served.cold_seconds:.2f} s of {sum(served.seconds):.2f} s"
    if served.system == "pytorch":
        what = (
            f"{sum(served.cold)} whole-model loads took {cold}; LRU of "
            f"{served.detail['capacity_models']} models"
        )
    else:
        what = (
            f"first request to each of {sum(served.cold)} models took {cold}; "
            f"{format_size(served.detail['pool_bytes_read'])} read into its pool"
        )
    say.line(
        f"  {served.system:<9} {served.throughput:8.2f} req/s  p50 {served.percentile_ms(50):8.1f} "
        f"ms  p99 {served.percentile_ms(99):8.1f} ms  ({what}{limit})"
    )


def _verdict(results: dict[str, Served], say: _Printer) -> None:
    ours, theirs = results["weightdb"], results["pytorch"]
    if ours.error or theirs.error:
        loser = ours if ours.error else theirs
        say.line(f"  {loser.system} did not finish under this limit: {loser.error}")
        return
    ratio = ours.throughput / theirs.throughput
    if ours.warm_p50_ms is not None and theirs.warm_p50_ms is not None:
        say.line(
            f"  warm requests (model prepared or loaded already): weightdb p50 "
            f"{ours.warm_p50_ms:.1f} ms, PyTorch p50 {theirs.warm_p50_ms:.1f} ms"
        )
    if ratio >= 1:
        say.line(
            f"  weightdb serves {ratio:.2f}x PyTorch's requests per second: PyTorch reads whole "
            "models again on every miss, while the variants' shared blocks are stored once and "
            "stay in weightdb's pool."
        )
    elif ours.cold_seconds > sum(ours.seconds) / 2:
        say.line(
            f"  weightdb loses here: {ratio:.2f}x PyTorch's requests per second. Most of its "
            "time went to each model's first request (preparing its plan, reading its blocks "
            "cold), which a run this short pays for every model."
        )
    else:
        say.line(
            f"  weightdb loses here: {ratio:.2f}x PyTorch's requests per second. Once a model "
            "is in memory, PyTorch's dense kernels over whole tensors beat weightdb's "
            "block-by-block products through its pool (benchmarks/results/REPORT.md measures "
            "where the two cross)."
        )


def _sql(db: Database, served: dict, scale: Scale, say: _Printer) -> None:
    rows = 4 * scale.rows_per_request
    say.section("3. SQL: a table scored by every model in one query")
    query, result = score_in_sql(db, served, rows)
    say.line(query)
    for row in result:
        say.line(
            f"  {row['model']:<14} {row['rows_scored']:>5} rows scored, top class equals the "
            f"base model's on {row['agrees_with_base']:.3f} of them"
        )
    say.line(
        "  (the variants change about a tenth of the base's blocks slightly: their answers "
        "mostly agree with the base's; the base agrees with itself, 1.000)"
    )


def _http(db: Database, served: dict, scale: Scale, say: _Printer) -> None:
    say.section("4. HTTP: one KServe v2 inference request")
    with np.load(served["dir"] / served["extra"]["requests"]) as split:
        inputs = split["input_ids"][: scale.rows_per_request]
    result = one_kserve_request(db, served["models"][1]["name"], inputs)
    say.line(f"  POST {result.url}")
    say.line(
        f"  status {result.status} in {result.seconds * 1e3:.1f} ms, output shape "
        f"{result.shape}; equals db.predict: {result.equals_python_api}"
    )
    say.line(
        f"  (db.predict on the same rows then took {result.python_api_seconds * 1e3:.1f} ms; "
        "the server ran in this process, as `weightdb serve` runs it on its own for any "
        "KServe v2 client)"
    )
