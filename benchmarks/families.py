"""Zoo families built and imported once, for the suites that measure real models.

Building a full family takes minutes and importing it into a database more, so both are cached
under ``$WEIGHTDB_BENCH_DIR`` (default ``<tmp>/weightdb-bench``). A complete zoo build of the
same family, size and seed is reused even when the zoo's code changed since: the zoo's own
cache key covers every zoo source file, so any edit would rebuild gigabytes (delete the folder
to rebuild). A database is reused when it was made from that very build. Databases are written
beside their final folder and renamed into place, so an interrupted run never leaves a
half-imported database that a later run would trust. Suites that change a database (packing
rewrites pages) work on a copy from ``copy_database``.
"""

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np

import weightdb
from weightdb import Settings
from weightdb.zoo.build import build_family
from weightdb.zoo.manifest import MANIFEST_NAME

BENCH_DIR = Path(
    os.environ.get("WEIGHTDB_BENCH_DIR", Path(tempfile.gettempdir()) / "weightdb-bench")
)
MAX_DROP = 0.01  # accuracy budget of approximate deduplication, per model
SMALL_FAMILY_BYTES = 64 * 2**20
SMALL_FAMILY_SETTINGS = Settings(block_rows=32, block_cols=32, page_size=64 * 1024)
"""Families below SMALL_FAMILY_BYTES would fit in a handful of default 4 MiB pages, which
leaves nothing to pack or cache; 4 KiB blocks on 64 KiB pages (16 blocks per page, the default
has 64) make them span tens of pages."""
MARKER = "benchmark.json"
T = TypeVar("T")


@dataclass(frozen=True)
class Family:
    """One built zoo family: its manifest, and the database settings the benchmarks use for it."""

    name: str
    size: str
    manifest_path: Path

    @cached_property
    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    @property
    def label(self) -> str:
        return f"{self.name}/{self.size}"

    @property
    def models(self) -> list[str]:
        return [model["name"] for model in self.manifest["models"]]

    @property
    def settings(self) -> Settings:
        total = sum(model["bytes"] for model in self.manifest["models"])
        return SMALL_FAMILY_SETTINGS if total < SMALL_FAMILY_BYTES else Settings()

    def test_batch(self, model: str, rows: int, offset: int = 0) -> dict[str, np.ndarray]:
        """``rows`` consecutive test examples of ``model`` (wrapping around), labels dropped."""
        entry = next(m for m in self.manifest["models"] if m["name"] == model)
        with np.load(self.manifest_path.parent / entry["test"]) as split:
            arrays = {key: split[key] for key in split.files if key != "labels"}
        count = len(next(iter(arrays.values())))
        take = np.arange(offset, offset + rows) % count
        return {key: array[take] for key, array in arrays.items()}


def family(name: str, size: str) -> Family:
    """The zoo family ``name`` at ``size`` (seed 0), built now unless a build is cached."""
    folder = BENCH_DIR / "zoo" / f"{name}-{size}"
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        start = time.perf_counter()
        build_family(name, folder, size, seed=0)
        print(f"  built {name}/{size} in {time.perf_counter() - start:.0f}s", flush=True)
    return Family(name, size, manifest)


class _Printer:
    """Zoo build progress: a line per tenth of each tensor's bands (a full build takes minutes)."""

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        step, start = max(1, total // 10), time.perf_counter()
        for k, item in enumerate(items, 1):
            yield item
            if k % step == 0 or k == total:
                print(f"  {label}: {k}/{total} ({time.perf_counter() - start:.0f}s)", flush=True)


def scale_family(total: str, models: int) -> tuple[Family, float | None]:
    """The scale family at full width, ``total`` bytes in ``models`` models, built now unless a
    build is cached (``family`` builds a size's defaults only); with the seconds the build took."""
    size = f"full-{total}-x{models}"
    folder = BENCH_DIR / "zoo" / f"scale-{size}"
    timing = folder.with_name(folder.name + ".build.json")
    if not (folder / MANIFEST_NAME).is_file():
        print(f"  building scale/full --total {total} --models {models} into {folder}", flush=True)
        start = time.perf_counter()
        options = {"total": total, "models": models}
        build_family("scale", folder, "full", seed=0, options=options, reporter=_Printer())
        timing.write_text(json.dumps({"build_seconds": time.perf_counter() - start}))
    seconds = json.loads(timing.read_text())["build_seconds"] if timing.is_file() else None
    return Family("scale", size, folder / MANIFEST_NAME), seconds


def database(fam: Family, dedup: str) -> tuple[Path, dict]:
    """A database of every model of ``fam``, deduplicated exactly (``dedup="exact"``: import
    alone does that) or by a method of ``weightdb.dedup`` at MAX_DROP on the family's eval spec.

    Returns the folder and what making it cost and saved (cached with the database)."""
    folder = BENCH_DIR / "db" / f"{fam.name}-{fam.size}-{dedup}"
    key = fam.manifest["cache_key"]
    if (folder / MARKER).is_file():
        info = json.loads((folder / MARKER).read_text())
        if info["cache_key"] == key:
            return folder, info
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    with weightdb.connect(staging, settings=fam.settings) as db:
        for model in fam.manifest["models"]:
            db.import_model(fam.manifest_path.parent / model["onnx"], model["name"])
        info = {"cache_key": key, "import_seconds": time.perf_counter() - start}
        if dedup != "exact":
            report = db.deduplicate(eval_spec=fam.manifest_path, max_drop=MAX_DROP, method=dedup)
            info["dedup"] = {
                "method": dedup,
                "max_drop": MAX_DROP,
                "reduction": report.reduction,
                "blocks_before": report.distinct_blocks_before,
                "blocks_after": report.distinct_blocks_after,
                "worst_test_drop": max(
                    m.test_before - m.test_after for m in report.models.values()
                ),
                "seconds": report.seconds,
            }
        stats = db.stats()
    info |= {key: stats[key] for key in ("logical_bytes", "stored_bytes", "distinct_blocks")}
    (staging / MARKER).write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    print(f"  imported {fam.label} ({dedup}) in {time.perf_counter() - start:.0f}s", flush=True)
    return folder, info


def copy_database(source: Path, target: Path) -> Path:
    """A fresh copy of the database at ``source`` that a suite may change."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def isolated(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a fresh process, for measurements that open connections and predict.

    Closing a Database does not free its buffer pool or its prepared models' resident weights
    (not even ``gc.collect()`` does), so a suite that opens hundreds of connections would run
    out of memory; a fresh process per measurement is also the coldest possible start.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(fn, *args).result()
