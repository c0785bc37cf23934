"""Storage: import/export throughput against cp and safetensors, bytes stored, block/page sweep.

    python -m benchmarks.run [--quick] storage

Three questions, each answered side by side in one run with medians (min, max) over repeats:

1. How fast are import and export of a >= 1 GiB float32 safetensors model (quick: ~265 MiB),
   as a ratio of time to ``cp`` of the same file (with and without fsync of the copy) and to
   ``safetensors`` loading it? Import fsyncs its pages and commits a SQLite transaction, so the
   floor (import within 3x of cp) is judged against cp followed by fsync.
2. How many bytes does weightdb store per byte imported: for a model, for a second copy of it
   under another name, and for a fine-tune with 10% of its blocks perturbed?
3. Which block shape and page size should be the defaults? A sweep on a ~130 MiB model measures
   import time, pages, page-file and catalog bytes, cold full-model reads through the buffer
   pool, and how much a fine-tune that changes sparse rows adds.

Before every timed run, outputs of the previous run are deleted, ``sync`` flushes dirty pages,
and the inputs (source file or database folder) are dropped from the page cache with
``posix_fadvise(DONTNEED)``, the same way for every system. Bytes read from and written to
storage per run come from ``getrusage`` (this process plus children such as ``cp``).

Models are BERT-like layouts of random float32 values, built once with numpy and cached in
``$WEIGHTDB_BENCH_DIR`` (default: ``<tmp>/weightdb-bench``), on the filesystem where copies and
databases are written too.
"""

import filecmp
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

import weightdb
from benchmarks.harness import (
    markdown_table,
    ratio,
    render,
    spread,
    summary,
    write_results,
)
from weightdb.errors import WeightDBError
from weightdb.memory_limit import drop_page_cache
from weightdb.storage.blocking import as_matrix, layout_for
from weightdb.storage.page_files import fsync_path
from weightdb.storage.settings import Settings

BENCH_DIR = Path(
    os.environ.get("WEIGHTDB_BENCH_DIR", Path(tempfile.gettempdir()) / "weightdb-bench")
)
MIB = 1024 * 1024
GB = 1e9
IMPORT_FLOOR = 3.0  # import time / (cp + fsync) time allowed by issue 2
FINETUNE_BLOCKS = 0.10  # fraction of (default-shape) blocks a fine-tune perturbs in part 2
FINETUNE_ROWS = 0.002  # fraction of rows of every matrix a sweep fine-tune perturbs
BLOCK_SHAPES = ((64, 64), (128, 128), (256, 256), (512, 512), (256, 1024))
PAGE_SIZES = (1 * MIB, 4 * MIB, 16 * MIB)


@dataclass(frozen=True)
class ModelShape:
    """A BERT-like layout: token and position embeddings, attention and MLP matrices, 1-D
    biases and norms -- the mix of big, wide, narrow and tiny tensors real models have."""

    dim: int
    vocab: int
    layers: int

    @property
    def name(self) -> str:
        return f"bert-d{self.dim}-v{self.vocab}-l{self.layers}"

    def tensors(self) -> dict[str, tuple[int, ...]]:
        d = self.dim
        shapes: dict[str, tuple[int, ...]] = {
            "embed.tokens": (self.vocab, d),
            "embed.pos": (512, d),
        }
        for layer in range(self.layers):
            p = f"layer{layer}."
            for proj in "qkvo":
                shapes[f"{p}attn.{proj}.weight"] = (d, d)
                shapes[f"{p}attn.{proj}.bias"] = (d,)
            shapes[f"{p}mlp.up.weight"] = (4 * d, d)
            shapes[f"{p}mlp.up.bias"] = (4 * d,)
            shapes[f"{p}mlp.down.weight"] = (d, 4 * d)
            shapes[f"{p}mlp.down.bias"] = (d,)
            for norm in ("norm1", "norm2"):
                shapes[f"{p}{norm}.weight"] = (d,)
                shapes[f"{p}{norm}.bias"] = (d,)
        return shapes


BIG = ModelShape(dim=1024, vocab=30522, layers=20)  # 1.13 GB, BERT-large-like
QUICK_BIG = ModelShape(dim=1024, vocab=30522, layers=3)  # 278 MB
SWEEP = ModelShape(dim=768, vocab=8192, layers=4)  # 140 MB, BERT-base-like
QUICK_SWEEP = ModelShape(dim=768, vocab=8192, layers=1)  # 55 MB

Arrays = dict[str, np.ndarray]


# -- inputs -------------------------------------------------------------------------------


def cached(path: Path, build: Callable[[], Arrays]) -> Path:
    """Build a safetensors file once; later runs (and both modes) reuse it."""
    if not path.exists():
        print(f"  building {path.name}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        save_file(build(), tmp)
        tmp.replace(path)
    return path


def model_file(shape: ModelShape) -> Path:
    def build() -> Arrays:
        rng = np.random.default_rng(0)
        arrays = {}
        for name, dims in shape.tensors().items():
            arrays[name] = rng.standard_normal(dims, dtype=np.float32)
            arrays[name] *= 0.02
        return arrays

    return cached(BENCH_DIR / f"{shape.name}.safetensors", build)


def nudge(region: np.ndarray, rng: np.random.Generator) -> None:
    """What a fine-tuning step does to the weights it touches: a small change to each."""
    region += rng.standard_normal(region.shape, dtype=np.float32) * np.float32(1e-3)


def perturb_blocks(arrays: Arrays, rng: np.random.Generator) -> None:
    """Change a random FINETUNE_BLOCKS of the blocks in the default block layout."""
    for array in arrays.values():
        layout = layout_for(array.shape, Settings().block_shape)
        matrix = as_matrix(array)
        for i, j in layout.positions():
            if rng.random() < FINETUNE_BLOCKS:
                r0, r1, c0, c1 = layout.bounds(i, j)
                nudge(matrix[r0:r1, c0:c1], rng)


def perturb_rows(arrays: Arrays, rng: np.random.Generator) -> None:
    """Change a random FINETUNE_ROWS of the rows of every matrix (the tokens a task saw, the
    units it retrained) and every 1-D bias and norm whole."""
    for array in arrays.values():
        if array.ndim < 2:
            nudge(array, rng)
            continue
        matrix = as_matrix(array)
        count = max(1, round(FINETUNE_ROWS * matrix.shape[0]))
        for row in rng.choice(matrix.shape[0], count, replace=False):
            nudge(matrix[row], rng)


def finetune_file(
    base: Path, tag: str, perturb: Callable[[Arrays, np.random.Generator], None]
) -> Path:
    """A fine-tune of ``base``; ``tag`` names the change (and its amount) in the cache."""

    def build() -> Arrays:
        arrays = load_file(base)
        perturb(arrays, np.random.default_rng(1))
        return arrays

    return cached(base.with_name(f"{base.stem}-{tag}.safetensors"), build)


# -- measuring ----------------------------------------------------------------------------


def usage() -> tuple[float, int, int]:
    """CPU seconds, and bytes read from and written to storage, so far by this process and its
    children (``cp``). CPU time is what a loaded shared machine distorts least."""
    own, kids = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return cpu, (own.ru_inblock + kids.ru_inblock) * 512, (own.ru_oublock + kids.ru_oublock) * 512


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class System:
    """One contender: what to time, and what to delete (outputs) and evict (inputs) first."""

    label: str
    fn: Callable[[], object]
    outputs: tuple[Path, ...] = ()
    inputs: tuple[Path, ...] = ()

    def run_once(self) -> tuple[float, float, int, int]:
        """Seconds, CPU seconds, storage bytes read and written by one cold run."""
        for path in self.outputs:
            remove(path)
        os.sync()  # no earlier run's dirty pages get written back during this one
        for path in self.inputs:
            drop_page_cache(path)
        before = usage()
        start = time.perf_counter()
        self.fn()
        seconds = time.perf_counter() - start
        cpu, read, written = (end - begin for begin, end in zip(before, usage(), strict=True))
        return seconds, cpu, int(read), int(written)


def compare(systems: list[System], repeats: int, nbytes: int) -> dict[str, dict[str, Any]]:
    """Run every system once per round, ``repeats`` rounds, so that drift on a shared machine
    hits all of them alike; median, min and max seconds, median bytes, GB/s of ``nbytes``."""
    samples: dict[str, list[tuple[float, float, int, int]]] = {s.label: [] for s in systems}
    for round_number in range(repeats):
        print(f"  round {round_number + 1}/{repeats}", flush=True)
        for system in systems:
            samples[system.label].append(system.run_once())
    results = {}
    for label, rows in samples.items():
        seconds, cpu, reads, writes = zip(*rows, strict=True)
        result = {
            **summary(seconds, with_runs=True),
            "cpu_seconds": median(cpu),
            "read_bytes": int(median(reads)),
            "written_bytes": int(median(writes)),
        }
        result["gb_per_s"] = nbytes / result["median"] / GB
        print(
            f"  {label}: {spread(result)} s, "
            f"{result['gb_per_s']:.2f} GB/s, CPU {result['cpu_seconds']:.2f}s, "
            f"read {result['read_bytes'] / MIB:.0f} MiB, "
            f"wrote {result['written_bytes'] / MIB:.0f} MiB",
            flush=True,
        )
        results[label] = result
    return results


@contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder beside the cached models (same filesystem), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="scratch-", dir=BENCH_DIR))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def durable(path: Path) -> None:
    """What weightdb does before it commits: the file's data and its directory entry on disk."""
    fsync_path(path)
    fsync_path(path.parent)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- the systems being compared -----------------------------------------------------------


def cp(src: Path, dst: Path, sync: bool) -> None:
    subprocess.run(["cp", "--", str(src), str(dst)], check=True)
    if sync:
        durable(dst)


def safetensors_load_save(src: Path, dst: Path) -> None:
    """The safetensors way to rewrite a model file: load it into memory, save it, fsync."""
    save_file(load_file(src), dst)
    durable(dst)


def import_model(db_path: Path, src: Path, name: str, settings: Settings | None = None) -> None:
    with weightdb.connect(db_path, settings=settings) as db:
        db.import_model(src, name)


def export_model(db_path: Path, name: str, dst: Path, sync: bool) -> None:
    with weightdb.connect(db_path, create=False) as db:
        db.export_model(name, dst)
    if sync:
        durable(dst)


def read_model(db_path: Path, name: str) -> None:
    """Every tensor of a model as arrays, through a fresh (cold) buffer pool."""
    with weightdb.connect(db_path, create=False) as db:
        for tensor in db.tensors(name).values():
            tensor.read()


def db_stats(db_path: Path) -> dict[str, Any]:
    with weightdb.connect(db_path, create=False) as db:
        stats = db.stats()
    return {**stats, "disk_bytes": tree_bytes(db_path), "catalog_bytes": catalog_bytes(db_path)}


def catalog_bytes(db_path: Path) -> int:
    return sum(f.stat().st_size for f in db_path.glob("catalog.sqlite*"))


# -- 1 and 2: throughput and bytes stored -------------------------------------------------


def throughput_and_bytes(shape: ModelShape, repeats: int) -> dict[str, Any]:
    """Part 1 on the big model, then part 2 on the database the last timed import left."""
    src = model_file(shape)
    finetune = finetune_file(src, f"blocks{FINETUNE_BLOCKS}", perturb_blocks)
    size = src.stat().st_size
    print(f"import/export of {src.name} ({size / MIB:.0f} MiB), {repeats} repeats", flush=True)
    with scratch() as tmp:
        copy, out, db = tmp / "copy.safetensors", tmp / "out.safetensors", tmp / "db"
        # Export reads the database the import of the same round left behind.
        systems = [
            System("cp", partial(cp, src, copy, sync=False), (copy,), (src,)),
            System("cp + fsync", partial(cp, src, copy, sync=True), (copy,), (src,)),
            System("safetensors load_file", partial(load_file, src), (), (src,)),
            System(
                "safetensors load_file + save_file + fsync",
                partial(safetensors_load_save, src, copy),
                (copy,),
                (src,),
            ),
            System("weightdb import", partial(import_model, db, src, "base"), (db,), (src,)),
            System("weightdb export", partial(export_model, db, "base", out, False), (out,), (db,)),
            System(
                "weightdb export + fsync",
                partial(export_model, db, "base", out, True),
                (out,),
                (db,),
            ),
        ]
        runs = compare(systems, repeats, size)
        remove(copy)
        identical = filecmp.cmp(src, out, shallow=False)
        remove(out)
        stored = bytes_stored(db, {"base": src, "copy": src, "finetune": finetune})
    return {
        "model": {"name": src.name, "bytes": size, "tensors": len(shape.tensors())},
        "repeats": repeats,
        "runs": runs,
        "export_bit_identical": identical,
        "bytes_stored": stored,
    }


def bytes_stored(db: Path, imports: dict[str, Path]) -> list[dict[str, Any]]:
    """Import each model in turn (the first is already in ``db``); what did each one add?"""
    steps = []
    before = {key: 0 for key in ("logical_bytes", "stored_bytes", "page_file_bytes", "disk_bytes")}
    for name, src in imports.items():
        if name != "base":
            import_model(db, src, name)
        after = db_stats(db)
        added = {key: after[key] - before[key] for key in before}
        steps.append({"model": name, **added, "pages": after["pages"]})
        print(
            f"  {name}: stored {added['stored_bytes'] / added['logical_bytes']:.3f} bytes per byte"
            f" imported, page files {added['page_file_bytes'] / added['logical_bytes']:.3f}",
            flush=True,
        )
        before = {key: after[key] for key in before}
    return steps


# -- 3: block shape and page size sweep ----------------------------------------------------


def sweep(shape: ModelShape, repeats: int) -> dict[str, Any]:
    """Every block shape x page size, beside cp + fsync and safetensors load of the same file."""
    src = model_file(shape)
    finetune = finetune_file(src, f"rows{FINETUNE_ROWS}", perturb_rows)
    size = src.stat().st_size
    print(f"sweep on {src.name} ({size / MIB:.0f} MiB), {repeats} repeats", flush=True)
    with scratch() as tmp:
        copy = tmp / "copy.safetensors"
        baselines = compare(
            [
                System("cp + fsync", partial(cp, src, copy, sync=True), (copy,), (src,)),
                System("safetensors load_file", partial(load_file, src), (), (src,)),
            ],
            repeats,
            size,
        )
    points = [
        sweep_point(src, finetune, size, Settings(block_rows, block_cols, page_size), repeats)
        for block_rows, block_cols in BLOCK_SHAPES
        for page_size in PAGE_SIZES
    ]
    return {"model": {"name": src.name, "bytes": size}, "baselines": baselines, "points": points}


def sweep_point(
    src: Path, finetune: Path, size: int, settings: Settings, repeats: int
) -> dict[str, Any]:
    """Import, cold read and fine-tune dedup under one block shape and page size."""
    point: dict[str, Any] = {
        "block_shape": list(settings.block_shape),
        "page_size": settings.page_size,
    }
    label = f"{settings.block_rows}x{settings.block_cols}, {settings.page_size // MIB} MiB pages"
    try:
        settings.validate()
    except WeightDBError as error:
        print(f"  {label}: skipped ({error})", flush=True)
        return point | {"skipped": str(error)}
    with scratch() as tmp:
        db = tmp / "db"
        importing = partial(import_model, db, src, "base", settings)
        runs = compare(
            [
                System(f"{label}: import", importing, (db,), (src,)),
                System(f"{label}: cold read", partial(read_model, db, "base"), (), (db,)),
            ],
            repeats,
            size,
        )
        point["import"], point["read"] = runs.values()
        base = db_stats(db)
        import_model(db, finetune, "finetune")
        after = db_stats(db)
    point |= {
        "pages": base["pages"],
        "distinct_blocks": base["distinct_blocks"],
        "page_file_bytes": base["page_file_bytes"],
        "catalog_bytes": base["catalog_bytes"],
        "finetune_added_bytes": after["stored_bytes"] - base["stored_bytes"],
        "finetune_added_catalog_bytes": after["catalog_bytes"] - base["catalog_bytes"],
    }
    print(
        f"  {label}: fine-tune adds {point['finetune_added_bytes'] / size:.3f} of its bytes",
        flush=True,
    )
    return point


# -- report -------------------------------------------------------------------------------

REPORT = """
## Storage: import/export throughput, bytes stored, block and page sweep

Every timed run starts cold: outputs deleted, `sync`, inputs dropped from the page cache with \
posix_fadvise(DONTNEED); read/written MiB are per run, from getrusage. Systems run in rounds \
(each once per round), so drift hits all alike; CPU s is user + system time of this process \
and its children, median per run. Load average (1 min) at start $load_start, at end $load_end \
on $cpus CPUs.$quick

$throughput

$bytes

$sweep
"""
THROUGHPUT_REPORT = """
### Import and export of $name ($mib MiB, $tensors float32 tensors), $repeats runs each

$table

**Floor: import within ${floor}x of cp -- $verdict** (import takes ${import_ratio}x the time of \
cp + fsync; the floor uses cp + fsync because import makes its pages durable before it \
commits; without fsync cp takes $cp_ratio of cp + fsync). Ratios are of median times (higher \
= slower). weightdb export writes without fsync; the '+ fsync' row adds it for the durable \
comparison. Exported file bit-identical to the source: $identical.
"""
BYTES_REPORT = """
### Bytes stored per byte imported

Into one database in turn: the model, the same file under a second name, and a fine-tune \
with $finetune_blocks of its 256x256 blocks perturbed. Database bytes include page files and \
the SQLite catalog (with its WAL).

$table
"""
SWEEP_REPORT = """
### Block shape and page size sweep on $name ($mib MiB)

Baselines in the same run: cp + fsync $cp_sync s, safetensors load_file $st_load s. Cold \
read = every tensor as an array through a fresh buffer pool after dropping the database from \
the page cache. The fine-tune perturbs $finetune_rows of the rows of every matrix (and every \
bias and norm) and is imported next to the model; lower is better.

$table
"""


def slower(run: dict[str, Any], baseline: dict[str, Any]) -> str:
    """How many times ``baseline``'s median time ``run`` takes."""
    return ratio(run["median"], baseline["median"])


def throughput_markdown(part: dict[str, Any]) -> str:
    runs = part["runs"]
    cp_plain, cp_sync, st_load = runs["cp"], runs["cp + fsync"], runs["safetensors load_file"]
    table = markdown_table(
        [
            "system",
            "seconds median (min-max)",
            "GB/s",
            "CPU s",
            "read MiB",
            "written MiB",
            "time / cp",
            "time / (cp + fsync)",
            "time / safetensors load",
        ],
        [
            [
                label,
                spread(run),
                f"{run['gb_per_s']:.2f}",
                f"{run['cpu_seconds']:.2f}",
                f"{run['read_bytes'] / MIB:.0f}",
                f"{run['written_bytes'] / MIB:.0f}",
                slower(run, cp_plain),
                slower(run, cp_sync),
                slower(run, st_load),
            ]
            for label, run in runs.items()
        ],
    )
    import_ratio = runs["weightdb import"]["median"] / cp_sync["median"]
    verdict = "met" if import_ratio <= IMPORT_FLOOR else "NOT met"
    model = part["model"]
    return render(
        THROUGHPUT_REPORT,
        name=model["name"],
        mib=f"{model['bytes'] / MIB:.0f}",
        tensors=model["tensors"],
        repeats=part["repeats"],
        table=table,
        floor=f"{IMPORT_FLOOR:g}",
        verdict=verdict,
        import_ratio=f"{import_ratio:.2f}",
        cp_ratio=slower(cp_plain, cp_sync),
        identical=part["export_bit_identical"],
    )


def bytes_markdown(steps: list[dict[str, Any]]) -> str:
    table = markdown_table(
        [
            "import",
            "logical MiB",
            "block bytes added / byte imported",
            "page-file bytes added / byte imported",
            "database bytes added / byte imported",
            "pages total",
        ],
        [
            [
                step["model"],
                f"{step['logical_bytes'] / MIB:.0f}",
                f"{step['stored_bytes'] / step['logical_bytes']:.4f}",
                f"{step['page_file_bytes'] / step['logical_bytes']:.4f}",
                f"{step['disk_bytes'] / step['logical_bytes']:.4f}",
                step["pages"],
            ]
            for step in steps
        ],
    )
    return render(BYTES_REPORT, finetune_blocks=f"{FINETUNE_BLOCKS:.0%}", table=table)


def sweep_markdown(part: dict[str, Any]) -> str:
    cp_sync, st_load = part["baselines"]["cp + fsync"], part["baselines"]["safetensors load_file"]
    size = part["model"]["bytes"]
    rows = []
    for p in part["points"]:
        shape = f"{p['block_shape'][0]}x{p['block_shape'][1]}"
        page = f"{p['page_size'] // MIB} MiB"
        if "skipped" in p:
            rows.append([shape, page, "skipped: a block of 8-byte values does not fit a page"])
            continue
        rows.append(
            [
                shape,
                page,
                spread(p["import"]),
                slower(p["import"], cp_sync),
                f"{p['import']['cpu_seconds']:.2f}",
                p["pages"],
                f"{p['page_file_bytes'] / size:.4f}",
                f"{p['catalog_bytes'] / MIB:.2f}",
                spread(p["read"]),
                slower(p["read"], st_load),
                f"{p['finetune_added_bytes'] / size:.3f}",
            ]
        )
    table = markdown_table(
        [
            "block",
            "page",
            "import s (min-max)",
            "import / (cp + fsync)",
            "import CPU s",
            "pages",
            "page-file bytes / model bytes",
            "catalog MiB",
            "cold read s (min-max)",
            "read / safetensors load",
            "fine-tune bytes added / its bytes",
        ],
        rows,
    )
    return render(
        SWEEP_REPORT,
        name=part["model"]["name"],
        mib=f"{size / MIB:.0f}",
        cp_sync=spread(cp_sync),
        st_load=spread(st_load),
        finetune_rows=f"{FINETUNE_ROWS:.1%}",
        table=table,
    )


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """Measure parts 1-3 and write storage.json and storage.md to ``out_dir``."""
    load_before = os.getloadavg()
    results = {
        "quick": quick,
        "import_export": throughput_and_bytes(QUICK_BIG if quick else BIG, 3 if quick else 7),
        "sweep": sweep(QUICK_SWEEP if quick else SWEEP, 2 if quick else 3),
    }
    results["load_average"] = {"start": load_before, "end": os.getloadavg()}
    write_results(out_dir, "storage", results, markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    load = results["load_average"]
    return render(
        REPORT,
        load_start=f"{load['start'][0]:.1f}",
        load_end=f"{load['end'][0]:.1f}",
        cpus=os.cpu_count(),
        quick=" Quick mode: smaller models, fewer runs." if results["quick"] else "",
        throughput=throughput_markdown(results["import_export"]),
        bytes=bytes_markdown(results["import_export"]["bytes_stored"]),
        sweep=sweep_markdown(results["sweep"]),
    )
