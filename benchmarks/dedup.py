"""Deduplication: storage kept vs accuracy drop per method and budget, on the zoo families.

For every family, method and budget a fresh copy of the imported family is deduplicated with
the family's own family.json as the eval spec. Reductions are given against the bytes stored
after import (which already deduplicates exactly) and, as netsDB reports them, against the
blocks all models would need without any deduplication.
"""

import json
import shutil
import tempfile
from pathlib import Path

import weightdb
from benchmarks.common import markdown_table, write_results
from weightdb.dedup import deduplicate
from weightdb.zoo.build import build_family

BUDGETS = [0.005, 0.01, 0.02, 0.035]
METHODS = ["netsdb", "weightdb", "mistique", "pairwise"]
QUICK_FAMILIES = ["digits-cnn", "xml-mlp"]
FULL_FAMILIES = ["digits-cnn", "xml-mlp", "text-embedding", "minilm-finetunes"]


def run(quick: bool, out_dir: Path) -> dict:
    families = QUICK_FAMILIES if quick else FULL_FAMILIES
    size = "small" if quick else "full"
    results, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="weightdb-dedup-bench-") as scratch:
        root = Path(scratch)
        for family in families:
            results[family] = _family(family, size, root)
            for r in results[family]["runs"]:
                rows.append(
                    [
                        family,
                        r["method"],
                        f"{r['budget']:.3f}",
                        f"{r['reduction']:.1%}",
                        f"{r['reduction_vs_logical']:.1%}",
                        f"{r['blocks_before']} -> {r['blocks_after']}",
                        f"{r['worst_test_drop']:+.4f}",
                        "yes" if r["within_budget"] else "NO",
                        f"{r['seconds_per_gb']:.0f}",
                    ]
                )
    markdown = "## Deduplication\n\n" + markdown_table(
        [
            "family",
            "method",
            "budget",
            "saved vs exact",
            "saved vs logical",
            "blocks",
            "worst test drop",
            "all within budget",
            "s/GB",
        ],
        rows,
    )
    payload = {"quick": quick, "size": size, "families": results}
    write_results(out_dir, "dedup", payload, markdown)
    _plot(results, out_dir / "dedup.png")
    return payload


def _family(family: str, size: str, root: Path) -> dict:
    folder = root / family
    build_family(family, folder, size, seed=0)
    manifest = json.loads((folder / "family.json").read_text())
    base = root / f"{family}-db"
    with weightdb.connect(base) as db:
        for model in manifest["models"]:
            db.import_model(folder / model["onnx"], model["name"])
        stats = db.stats()
    runs = []
    for method in METHODS:
        for budget in BUDGETS:
            work = root / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base, work)
            with weightdb.connect(work, create=False) as db:
                report = deduplicate(
                    db, eval_spec=folder / "family.json", max_drop=budget, method=method
                )
                logical_blocks = db.catalog.conn.execute(
                    "SELECT COUNT(*) FROM tensor_blocks"
                ).fetchone()[0]
            drops = {n: m.test_before - m.test_after for n, m in report.models.items()}
            runs.append(
                {
                    "method": method,
                    "budget": budget,
                    "reduction": report.reduction,
                    "reduction_vs_logical": 1 - report.distinct_blocks_after / logical_blocks,
                    "blocks_before": report.distinct_blocks_before,
                    "blocks_after": report.distinct_blocks_after,
                    "logical_blocks": logical_blocks,
                    "test_drops": drops,
                    "worst_test_drop": max(drops.values(), default=0.0),
                    "within_budget": all(d <= budget + 1e-9 for d in drops.values()),
                    "evaluations": report.evaluations,
                    "seconds": report.seconds,
                    "seconds_per_gb": report.seconds / (stats["logical_bytes"] / 1e9),
                }
            )
            print(
                family,
                method,
                budget,
                f"{report.reduction:.3f}",
                f"{runs[-1]['worst_test_drop']:+.4f}",
                flush=True,
            )
    return {
        "logical_bytes": stats["logical_bytes"],
        "stored_bytes": stats["stored_bytes"],
        "runs": runs,
    }


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for axis, (family, data) in zip(axes[0], results.items(), strict=True):
        for method in METHODS:
            runs = [r for r in data["runs"] if r["method"] == method]
            axis.plot(
                [r["worst_test_drop"] for r in runs],
                [1 - r["reduction"] for r in runs],
                marker="o",
                label=method,
            )
        axis.set_title(family)
        axis.set_xlabel("worst per-model test accuracy drop")
        axis.set_ylabel("storage kept (after exact = 1)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
