"""storage_tiers: bytes stored by the exact, lossless and approximate tiers, and what the lossless
tier costs to read.

For every family measured, fp32 and a bf16 copy (each float32 tensor rounded to bfloat16, saved
as safetensors beside the zoo build): bytes stored after exact dedup (import), after
``weightdb compress`` (exact + lossless), and after compressing the database that approximate
dedup at a 1% budget left (exact + approximate + lossless, fp32 only: the approximate tier
needs the graph to validate; measured where the dedup suite's database is cached); against
the model files compressed three ways without any dedup: plain zstd-3 per file, byte
planes + zstd-3 per tensor (ZipNN-style, no parent), and zipnn where it is installed. The bit
statistics of the deltas say why a family saves what it does: the share of elements a delta
leaves unchanged, how many sign, exponent and mantissa bits flip per element, and the noise
floor: the bits below an element's highest flipped bit are as good as random, so no lossless
coder stores a delta in fewer bits per element than the entropy of that highest bit's position
plus the bits below it. Where the bytes go: stored over raw bytes of each byte group, for
blocks coded alone and for deltas.

Decode throughput is every coded page of a compressed database decoded from memory (pages read
from disk first, bases resident), per CPU second (one core) and per wall second. Serving
throughput runs one fine-tune in memory (unbounded pool, warm) from the exact database and from
the compressed one; and, over budget,
every model of the family in turn with a pool halfway between the bytes stored with the tier on
and off (the coded working set fits, the raw one does not) and the page files dropped from the
OS cache before every request, so the tier off reads storage and the tier on decodes the coded
pages its pool kept. Which wins depends on the disk (this one reads a dropped cache at several
GB/s), so that runs in a child process at this disk's bandwidth and again with the child's reads
throttled to cloud-volume bandwidths (``ReadThrottle``), and the report gives the bandwidth
below which the tier on wins.
"""

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import zstandard
from safetensors.numpy import load_file, save_file

import weightdb
from benchmarks.families import BENCH_DIR, MARKER, Family, copy_database, database, family
from benchmarks.harness import REPO, markdown_table, render, spread, summary, write_results
from weightdb.memory_limit import ReadThrottle, drop_page_cache, throttle_available
from weightdb.storage import codecs, dtypes
from weightdb.storage.page_images import decode_page
from weightdb.units import format_size
from weightdb.zoo.build import build_family
from weightdb.zoo.manifest import MANIFEST_NAME

FAMILIES = [("minilm-finetunes", "small"), ("digits-cnn", "small"), ("xml-mlp", "small")]
LONG_STEPS = 500  # the longer minilm fine-tune, reported on its own
FLOOR_SAVING = 0.5  # exact + lossless stores at least this much less than exact alone
FLOOR_DECODE_GBPS = 1.0
FLOOR_SERVING_RATIO = 0.95
DELTA_SAMPLE = 256  # delta blocks whose bit statistics are measured
SAMPLE_SECONDS = 1.0  # of serving per throughput sample, so small models are timed in bulk
BANDWIDTH_FROM_BYTES = 1 << 20
"""Bytes a tier-off pass must read for the bandwidths derived from it: below, the seconds the
reads take are lost in the noise (digits-cnn and xml-mlp read a few KiB per pass)."""
THROTTLES = (100_000_000, 250_000_000, 1_000_000_000)
"""Read bandwidths (bytes/s) over-budget serving is measured at besides this disk's own: cloud
volumes, a throughput HDD one, a general-purpose SSD one and a fast one."""


def run(quick: bool, out_dir: Path) -> dict:
    repeats = 3 if quick else 5
    results = {"quick": quick, "families": {}}
    for name, size in FAMILIES:
        fam = family(name, size)
        for dtype in ("float32", "bfloat16"):
            label = f"{fam.label} {dtype}"
            print(f"  {label}", flush=True)
            results["families"][label] = measure(fam, dtype, repeats)
    print(f"  minilm-finetunes/small with a {LONG_STEPS}-step fine-tune", flush=True)
    results["long_finetune"] = long_finetune()
    results["floors"] = floors(results)
    write_results(out_dir, "storage_tiers", results, markdown(results))
    return results


def measure(fam: Family, dtype: str, repeats: int) -> dict:
    files = model_files(fam, dtype)
    exact = exact_database(fam, dtype, files)
    lossless = copy_database(exact, BENCH_DIR / "scratch" / f"{fam.name}-{dtype}-lossless")
    with weightdb.connect(exact) as db:
        exact_stats = db.stats()
    with weightdb.connect(lossless) as db:
        report = db.compress()
        stats = db.stats()
        deltas = delta_bits(db)
        groups = bytes_by_group(db)
        decode = decode_speed(db, repeats)
    result = {
        "logical_bytes": exact_stats["logical_bytes"],
        "exact_bytes": exact_stats["stored_bytes"],
        "exact_lossless_bytes": stats["stored_bytes"],
        "lossless_saving_vs_exact": 1 - stats["stored_bytes"] / exact_stats["stored_bytes"],
        "compress_seconds": report.seconds,
        "parents": report.parents_found,
        "delta_blocks": report.delta_blocks,
        "coded_blocks": report.coded_blocks,
        "files": file_baselines(files, dtype),
        "delta_bits": deltas,
        "bytes_by_group": groups,
        "decode": decode,
    }
    if dtype == "float32":
        result["approximate"] = approximate_lossless(fam)
        result["serving"] = serving(fam, exact, lossless, repeats)
        budget = (exact_stats["stored_bytes"] + stats["stored_bytes"]) // 2
        result["serving_over_budget"] = serving_over_budget(fam, exact, lossless, budget, repeats)
    return result


def long_finetune() -> dict:
    """The family plus one fine-tune of LONG_STEPS steps: what that model alone adds to the
    database, exact and exact + lossless, and its deltas' bit statistics."""
    folder = BENCH_DIR / "zoo" / f"minilm-finetunes-small-long{LONG_STEPS}"
    if not (folder / MANIFEST_NAME).is_file():
        build_family("minilm-finetunes", folder, "small", 0, {"long_steps": LONG_STEPS})
    fam = Family("minilm-finetunes", "small", folder / MANIFEST_NAME)
    long_model = fam.models[-1]
    path = BENCH_DIR / "scratch" / "minilm-long"
    shutil.rmtree(path, ignore_errors=True)
    with weightdb.connect(path, settings=fam.settings) as db:
        for model in fam.manifest["models"]:
            db.import_model(folder / model["onnx"], model["name"])
        exact = introduced_bytes(db)[long_model]
        db.compress()
        lossless = introduced_bytes(db)[long_model]
        bits = delta_bits(db, long_model)
        parent = db.parent(long_model)
    return {
        "model": long_model,
        "steps": LONG_STEPS,
        "parent": parent,
        "exact_bytes": exact,
        "exact_lossless_bytes": lossless,
        "lossless_saving_vs_exact": 1 - lossless / exact,
        "delta_bits": bits,
    }


def introduced_bytes(db) -> dict[str, int]:
    """Model -> stored bytes of the blocks it brought (used by no model imported before it)."""
    rows = db.store.catalog.conn.execute(
        "SELECT m.name, SUM(COALESCE(c.stored_nbytes, b.nbytes)) FROM blocks b "
        "LEFT JOIN block_codings c USING (block_id) JOIN (SELECT tb.block_id, "
        "MIN(t.model_id) AS first FROM tensor_blocks tb JOIN tensors t USING (tensor_id) "
        "GROUP BY tb.block_id) USING (block_id) JOIN models m ON m.model_id = first "
        "GROUP BY m.name"
    )
    return dict(rows)


def model_files(fam: Family, dtype: str) -> dict[str, Path]:
    """Model name -> its safetensors file in ``dtype`` (bf16 copies are made once)."""
    root = fam.manifest_path.parent
    files = {m["name"]: root / m["safetensors"] for m in fam.manifest["models"]}
    if dtype == "float32":
        return files
    folder = BENCH_DIR / "bf16" / f"{fam.name}-{fam.size}-{fam.manifest['cache_key']}"
    folder.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name, path in files.items():
        copies[name] = folder / f"{name}.safetensors"
        if not copies[name].is_file():
            arrays = {
                k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v
                for k, v in load_file(path).items()
            }
            save_file(arrays, copies[name].with_suffix(".partial"))
            copies[name].with_suffix(".partial").rename(copies[name])
    return copies


def exact_database(fam: Family, dtype: str, files: dict[str, Path]) -> Path:
    """The family deduplicated exactly: the cached ONNX import for fp32, else the copies."""
    if dtype == "float32":
        return database(fam, "exact")[0]
    folder = BENCH_DIR / "scratch" / f"{fam.name}-{dtype}-exact"
    shutil.rmtree(folder, ignore_errors=True)
    with weightdb.connect(folder, settings=fam.settings) as db:
        for name, path in files.items():
            db.import_model(path, name)
    return folder


def approximate_lossless(fam: Family) -> dict[str, int] | None:
    """Stored bytes after approximate dedup at the 1% budget, and after compressing that,
    where the dedup suite's database is cached (``benchmarks.families.database``: a run takes
    up to an hour per family here, so this suite does not start one)."""
    if not (BENCH_DIR / "db" / f"{fam.name}-{fam.size}-weightdb" / MARKER).is_file():
        return None
    folder, info = database(fam, "weightdb")
    target = copy_database(folder, BENCH_DIR / "scratch" / f"{fam.name}-approximate-lossless")
    with weightdb.connect(target) as db:
        db.compress()
        return {"exact_approximate": info["stored_bytes"], "all_three": db.stats()["stored_bytes"]}


def file_baselines(files: dict[str, Path], dtype: str) -> dict[str, int | None]:
    """Bytes of the model files under plain zstd-3, byte planes + zstd-3 and zipnn."""
    zstd = zstandard.ZstdCompressor(level=3)
    totals = {"files": 0, "zstd3": 0, "planes_zstd3": 0, "zipnn": 0}
    zipnn = _zipnn(dtype)
    for path in files.values():
        data = path.read_bytes()
        totals["files"] += len(data)
        totals["zstd3"] += len(zstd.compress(data))
        for array in load_file(path).values():
            raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
            coded = len(codecs.encode(raw, array.dtype.itemsize)) if raw.size else 0
            totals["planes_zstd3"] += min(coded, raw.size)
            if zipnn is not None:
                totals["zipnn"] += (
                    len(zipnn.compress(raw.tobytes())) if array.dtype.name == dtype else raw.size
                )
    if zipnn is None:
        totals["zipnn"] = None
    return totals


def _zipnn(dtype: str):
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    return ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)


def delta_bits(db, model: str | None = None) -> dict:
    """Over a sample of delta blocks (of ``model``, else of all): elements unchanged, and mean
    bits flipped per element in the sign, exponent and mantissa."""
    rows = db.store.catalog.conn.execute(
        "SELECT DISTINCT c.block_id, c.base_block_id, b.dtype FROM block_codings c "
        "JOIN blocks b USING (block_id) JOIN tensor_blocks tb USING (block_id) "
        "JOIN tensors t USING (tensor_id) JOIN models m USING (model_id) "
        "WHERE c.base_block_id IS NOT NULL AND (? IS NULL OR m.name = ?) ORDER BY c.block_id",
        (model, model),
    ).fetchall()
    if not rows:
        return {}
    step = max(1, len(rows) // DELTA_SAMPLE)
    dtype = rows[0][2]
    exponent_bits = {"float32": 8, "bfloat16": 8, "float16": 5}.get(dtype)
    if exponent_bits is None:
        return {}
    width = 32 if dtype == "float32" else 16
    unsigned = np.uint32 if width == 32 else np.uint16
    unchanged, counts = [], np.zeros(width)
    top_bits = np.zeros(width + 1)  # elements by the position of their highest flipped bit
    elements = 0
    for block_id, base, _ in rows[::step]:
        child = db.pool.block_bytes(block_id, 0).view(unsigned)
        parent = db.pool.block_bytes(base, 0).view(unsigned)
        delta = child ^ parent
        unchanged.append(float((delta == 0).mean()))
        bits = np.unpackbits(delta.view(np.uint8).reshape(-1, width // 8)[:, ::-1], axis=1)
        counts += bits.sum(0)
        top_bits += np.bincount(np.frexp(delta.astype(np.float64))[1], minlength=width + 1)
        elements += len(delta)
    per_bit = counts / elements
    return {
        "dtype": dtype,
        "sampled_blocks": len(unchanged),
        "unchanged_elements": statistics.fmean(unchanged),
        "sign_bits_flipped": float(per_bit[0]),
        "exponent_bits_flipped": float(per_bit[1 : 1 + exponent_bits].sum()),
        "mantissa_bits_flipped": float(per_bit[1 + exponent_bits :].sum()),
        "mantissa_bits": width - 1 - exponent_bits,
        "flip_probability_per_bit": [round(float(p), 3) for p in per_bit],
        "noise_floor_ratio": noise_floor(top_bits) / width,
    }


def noise_floor(top_bits: np.ndarray) -> float:
    """Bits per element no lossless coder goes below, given how many elements have their
    highest flipped bit at each position (0: unchanged): the entropy of that position plus
    the bits below it, which are as good as random (spatial structure, such as unchanged
    rows, can still beat it a little)."""
    share = top_bits / top_bits.sum()
    seen = share[share > 0]
    below = np.maximum(np.arange(len(share)) - 1, 0)
    return float(-(seen * np.log2(seen)).sum() + (share * below).sum())


def bytes_by_group(db) -> dict[str, list[float]]:
    """Stored over raw bytes of each byte group (low byte first) of the coded blocks, by
    dtype, for blocks coded alone and for deltas (``codecs.group_sizes``, once per stream)."""
    sums: dict[str, list[list[int]]] = {}
    for page_id, _ in db.store.catalog.live_pages():
        page = db.store.reader.read(db.store.locate_page(page_id))
        coded: dict[int, tuple[int, int]] = {}  # stored offset -> first slot, raw bytes
        for slot, entry in enumerate(page.entries):  # a stream's blocks share their stored bytes
            if entry.coded:
                first, raw = coded.get(entry.stored_offset, (slot, 0))
                coded[entry.stored_offset] = (first, raw + entry.nbytes)
        for slot, nbytes in coded.values():
            entry = page.entries[slot]
            itemsize = dtypes.by_name(entry.dtype).itemsize
            sizes = codecs.group_sizes(page.stored(slot), nbytes, itemsize, entry.codec)
            kind = f"{entry.dtype} {'deltas' if entry.codec in codecs.DELTAS else 'alone'}"
            totals = sums.setdefault(kind, [[0, 0] for _ in sizes])
            for total, (raw, stored) in zip(totals, sizes, strict=True):
                total[0] += raw
                total[1] += stored
    return {kind: [stored / raw for raw, stored in totals] for kind, totals in sorted(sums.items())}


def decode_speed(db, repeats: int) -> dict:
    """GB/s of decoded images, every coded page held encoded in memory and each image dropped
    once made (as a pool under a budget does). Per CPU second of the process (a large stream's
    groups decompress on helper threads, ``page_images.PARALLEL_FROM``): what one core does;
    and per wall second, which the helpers raise where a core is free."""
    page_ids = [p for p, _ in db.store.catalog.live_pages()]
    pages = [db.store.reader.read(db.store.locate_page(p)) for p in page_ids]
    pages = [page for page in pages if page.coded]
    if not pages:
        return {}
    for page in pages:  # bases resident, so only decoding is timed
        decode_page(page, db.pool.bases)
    image_bytes = sum(page.image_nbytes for page in pages)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for page in pages:
            decode_page(page, db.pool.bases)
        wall.append(image_bytes / (time.perf_counter() - start) / 1e9)
        cpu.append(image_bytes / (time.process_time() - start_cpu) / 1e9)
    return {
        "image_bytes": image_bytes,
        "gb_per_s": statistics.median(cpu),
        "gb_per_s_min": min(cpu),
        "gb_per_s_max": max(cpu),
        "wall_gb_per_s": summary(wall),
    }


def serving(fam: Family, exact: Path, lossless: Path, repeats: int) -> dict:
    """Rows per second predicting a fine-tune in memory, lossless tier off and on, measured
    alternately so that both see the same machine load."""
    model = fam.models[-1]
    batch = fam.test_batch(model, 32)
    rows = len(next(iter(batch.values())))
    dbs = {
        "off": weightdb.connect(exact, budget=None),
        "on": weightdb.connect(lossless, budget=None),
    }
    try:
        for db in dbs.values():
            db.predict(model, batch)  # warm: pages decoded and resident, plan compiled
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(repeats):
            for tier, db in dbs.items():  # each sample predicts for SAMPLE_SECONDS at least
                start, done = time.perf_counter(), 0
                while time.perf_counter() - start < SAMPLE_SECONDS:
                    db.predict(model, batch)
                    done += rows
                runs[tier].append(done / (time.perf_counter() - start))
        equal = all(
            dbs["off"].predict(model, batch)[k].tobytes() == v.tobytes()
            for k, v in dbs["on"].predict(model, batch).items()
        )
        resident = {tier: db.pool.stats().resident_bytes for tier, db in dbs.items()}
    finally:
        for db in dbs.values():
            db.close()
    rows_per_s = {tier: summary(values) for tier, values in runs.items()}
    return {
        "model": model,
        "batch": rows,
        "rows_per_s": rows_per_s,
        "ratio_on_off": rows_per_s["on"]["median"] / rows_per_s["off"]["median"],
        "predictions_equal": equal,
        "resident_bytes": resident,
    }


def serving_over_budget(
    fam: Family, exact: Path, lossless: Path, budget: int, repeats: int
) -> dict:
    """Serving over budget (``over_budget_passes``) in a child process: at this disk's own
    bandwidth, then, where blkio cgroups are available, with the child's reads throttled to each
    of THROTTLES. Break-even: the read bandwidth below which the tier on serves faster, the
    bytes a tier-off pass reads over the seconds a tier-on pass takes beyond one from memory
    (decoding); native: those bytes over the seconds a tier-off pass takes beyond one from
    memory (reading, as this disk does)."""
    result = _in_child(fam, exact, lossless, budget, repeats, None)
    seconds, read = result["seconds_per_pass"], result["bytes_read_per_pass"]["off"]
    decoding, reading = seconds["on"] - seconds["memory"], seconds["off"] - seconds["memory"]
    measurable = read >= BANDWIDTH_FROM_BYTES
    result["break_even_bytes_per_s"] = read / decoding if measurable and decoding > 0 else None
    result["native_bytes_per_s"] = read / reading if measurable and reading > 0 else None
    result["throttled"] = [
        _in_child(fam, exact, lossless, budget, repeats, bytes_per_s)
        for bytes_per_s in (THROTTLES if throttle_available() else ())
    ]
    return result


CHILD = (
    "import json, sys\n"
    "from benchmarks.storage_tiers import over_budget_passes\n"
    "print(json.dumps(over_budget_passes(*json.loads(sys.argv[1]))))"
)


def _in_child(
    fam: Family, exact: Path, lossless: Path, budget: int, repeats: int, bytes_per_s: int | None
) -> dict:
    """``over_budget_passes`` in a child process, its reads throttled to ``bytes_per_s`` (a
    ``ReadThrottle`` on the disk holding the databases) unless None."""
    args = [fam.name, fam.size, str(fam.manifest_path), str(exact), str(lossless), budget]
    throttle = ReadThrottle("storage-tiers", lossless, bytes_per_s) if bytes_per_s else None
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps([*args, repeats])],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            preexec_fn=throttle and throttle.join,
        )
        result = json.loads(child.stdout.splitlines()[-1])
        if throttle is not None:
            result["read_bytes_per_s"] = bytes_per_s
            result["disk_bytes_read"] = throttle.bytes_read
    finally:
        if throttle is not None:
            throttle.close()
    return result


def over_budget_passes(
    name: str, size: str, manifest: str, exact: str, lossless: str, budget: int, repeats: int
) -> dict:
    """Rows per second serving every model of the family in turn, storage cold, with a pool of
    ``budget`` bytes (see the module doc), tier off and on, and from memory (the exact
    database, unbounded pool, warm), in alternating passes; seconds and bytes read per pass."""
    fam = Family(name, size, Path(manifest))
    batches = {model: fam.test_batch(model, 8) for model in fam.models}
    rows = sum(len(next(iter(batch.values()))) for batch in batches.values())
    dbs = {
        "memory": weightdb.connect(exact, budget=None),
        "off": weightdb.connect(exact, budget=budget),
        "on": weightdb.connect(lossless, budget=budget),
    }
    runs: dict[str, list[float]] = {tier: [] for tier in dbs}
    read: dict[str, list[int]] = {tier: [] for tier in dbs}
    try:
        for db in dbs.values():  # warm: plans compiled, the pool filled as serving leaves it
            for model, batch in batches.items():
                db.predict(model, batch)
        for _ in range(repeats):
            for tier, db in dbs.items():
                before = db.pool.stats().bytes_read
                seconds = 0.0
                for model, batch in batches.items():
                    for path in db.store.page_files():
                        drop_page_cache(path)
                    start = time.perf_counter()
                    db.predict(model, batch)
                    seconds += time.perf_counter() - start
                runs[tier].append(seconds)
                read[tier].append(db.pool.stats().bytes_read - before)
    finally:
        for db in dbs.values():
            db.close()
    rows_per_s = {tier: summary([rows / s for s in values]) for tier, values in runs.items()}
    return {
        "budget_bytes": budget,
        "models": len(batches),
        "rows_per_s": rows_per_s,
        "ratio_on_off": rows_per_s["on"]["median"] / rows_per_s["off"]["median"],
        "seconds_per_pass": {tier: statistics.median(v) for tier, v in runs.items()},
        "bytes_read_per_pass": {tier: statistics.median(v) for tier, v in read.items()},
    }


def floors(results: dict) -> dict:
    cells = {}
    for label, r in results["families"].items():
        files = r["files"]
        others = [files["zstd3"]] + ([files["zipnn"]] if files["zipnn"] is not None else [])
        cells[label] = {
            "saving_vs_exact": r["lossless_saving_vs_exact"],
            "saving_met": r["lossless_saving_vs_exact"] >= FLOOR_SAVING,
            "beats_zstd_and_zipnn": r["exact_lossless_bytes"] < min(others),
            "decode_met": r["decode"].get("gb_per_s", 0) >= FLOOR_DECODE_GBPS,
        }
        if "serving" in r:
            cells[label]["serving_met"] = r["serving"]["ratio_on_off"] >= FLOOR_SERVING_RATIO
        if "serving_over_budget" in r:
            over = r["serving_over_budget"]
            cells[label]["over_budget_faster"] = over["ratio_on_off"] > 1
            cells[label]["over_budget_faster_throttled"] = {
                str(t["read_bytes_per_s"]): t["ratio_on_off"] > 1 for t in over["throttled"]
            }
    return cells


REPORT = """
## Storage tiers (`python -m benchmarks.run storage_tiers`)

Bytes stored by each tier and by compressing the model files without dedup. *lossless saving* \
is exact + lossless against exact alone (floor: at least 50% on minilm-finetunes). \
Approximate is weightdb dedup at a 1% accuracy budget (fp32 only).

$tiers

Why: bit statistics of the deltas (a sample of delta blocks; bits flipped per element). \
*noise floor*: the fewest bytes per raw byte a lossless coder can store these deltas in, the \
bits below an element's highest flipped bit being random.

$deltas

Where the bytes go: stored over raw bytes of each byte group of the coded blocks (the two low \
bytes of a 4-byte element are one group).

$groups

$long_finetune

Decoding (coded pages from memory, per CPU second of all threads: one core) and serving in \
memory, tier off and on (rows/s, median of alternating runs, min-max).

$speed

Serving over budget: every model of the family in turn (8 rows each), the pool halfway between \
the bytes stored with the tier on and off, page files dropped from the OS cache before every \
request, in a child process (rows/s, median of alternating passes, min-max; MiB read from \
storage per pass). *in memory*: the exact database with an unbounded pool, warm. *native*: \
this disk's effective read bandwidth, the bytes a tier-off pass reads over the seconds it \
takes beyond one in memory; *break-even*: the same bytes over the seconds a tier-on pass takes \
beyond one in memory (decoding): on a disk slower than that, the tier on serves faster.

$over_budget

The same with the child's reads throttled (cgroup v1 blkio, ``read_bps_device``) to the \
bandwidths of cloud volumes. The kernel's throttle lets a cgroup start a burst with a slice \
(100 ms) of its bandwidth at once (measured: 72 MiB read in 24 ms under a 1 GB/s cap), so a \
request reading less than that is hardly slowed: these rows understate a slow disk's cost, \
and the break-even above, which does not depend on them, is the one to read.

$throttled
"""
LONG_REPORT = """
A longer fine-tune: $model ($steps steps) added to minilm-finetunes/small stores $exact of new \
blocks after exact dedup and $lossless after exact + lossless against $parent ($saving less); \
its deltas leave $unchanged of elements unchanged and flip $exponent exponent and $mantissa of \
$mantissa_bits mantissa bits per element.
"""


def markdown(results: dict) -> str:
    fams = results["families"]
    tiers = markdown_table(
        [
            "family",
            "logical",
            "exact",
            "exact+lossless",
            "lossless saving",
            "exact+approx.",
            "exact+approx.+lossless",
            "zstd-3 files",
            "planes+zstd files",
            "zipnn files",
        ],
        [
            [
                label,
                format_size(r["logical_bytes"]),
                format_size(r["exact_bytes"]),
                format_size(r["exact_lossless_bytes"]),
                f"{r['lossless_saving_vs_exact']:.1%}",
                format_size(r["approximate"]["exact_approximate"])
                if r.get("approximate")
                else "n/a",
                format_size(r["approximate"]["all_three"]) if r.get("approximate") else "n/a",
                format_size(r["files"]["zstd3"]),
                format_size(r["files"]["planes_zstd3"]),
                format_size(r["files"]["zipnn"]) if r["files"]["zipnn"] is not None else "n/a",
            ]
            for label, r in fams.items()
        ],
    )
    deltas = markdown_table(
        [
            "family",
            "unchanged elements",
            "sign",
            "exponent",
            "mantissa (of)",
            "noise floor",
            "parents",
        ],
        [
            [
                label,
                f"{d['unchanged_elements']:.1%}",
                f"{d['sign_bits_flipped']:.3f}",
                f"{d['exponent_bits_flipped']:.3f}",
                f"{d['mantissa_bits_flipped']:.2f} ({d['mantissa_bits']})",
                f"{d['noise_floor_ratio']:.3f}" if "noise_floor_ratio" in d else "n/a",
                ", ".join(f"{c}<-{p}" for c, p in r["parents"].items()),
            ]
            for label, r in fams.items()
            if (d := r["delta_bits"])
        ],
    )
    groups = markdown_table(
        ["family", "blocks", "stored / raw per byte group, low byte first"],
        [
            [label, kind, " / ".join(f"{ratio:.3f}" for ratio in ratios)]
            for label, r in fams.items()
            for kind, ratios in r.get("bytes_by_group", {}).items()
        ],
    )
    speed = markdown_table(
        [
            "family",
            "decode GB/s per CPU s (min-max)",
            "per wall s",
            "serving off",
            "serving on",
            "on/off",
            "equal",
            "pool held off/on",
        ],
        [
            [label, *_decode_cells(r["decode"]), *_serving_cells(r.get("serving"))]
            for label, r in fams.items()
        ],
    )
    over_budget_rows = [
        [
            label,
            format_size(o["budget_bytes"]),
            str(o["models"]),
            spread(o["rows_per_s"]["memory"], "{:.1f}"),
            *_over_budget_cells(o),
            _megabytes_per_s(o["native_bytes_per_s"]),
            _megabytes_per_s(o["break_even_bytes_per_s"]),
        ]
        for label, r in fams.items()
        if (o := r.get("serving_over_budget"))
    ]
    over_budget = markdown_table(
        [
            "family",
            "pool budget",
            "models",
            "in memory",
            "tier off",
            "tier on",
            "on/off",
            "MiB read off / on",
            "native",
            "break-even",
        ],
        over_budget_rows,
    )
    throttled_rows = [
        [label, _megabytes_per_s(t["read_bytes_per_s"]), *_over_budget_cells(t)]
        for label, r in fams.items()
        for t in r.get("serving_over_budget", {}).get("throttled", [])
    ]
    throttled = markdown_table(
        ["family", "reads at", "tier off", "tier on", "on/off", "MiB read off / on"],
        throttled_rows,
    )
    return render(
        REPORT,
        tiers=tiers,
        deltas=deltas,
        groups=groups,
        long_finetune=_long_markdown(results["long_finetune"]),
        speed=speed,
        over_budget=over_budget if over_budget_rows else "(not measured in this run)",
        throttled=throttled if throttled_rows else "(not measured: needs root and cgroup v1 blkio)",
    )


def _over_budget_cells(o: dict) -> list[str]:
    """Rows/s tier off and on, their ratio, MiB read per pass off / on."""
    return [
        spread(o["rows_per_s"]["off"], "{:.1f}"),
        spread(o["rows_per_s"]["on"], "{:.1f}"),
        f"{o['ratio_on_off']:.2f}x",
        " / ".join(f"{o['bytes_read_per_pass'][t] / 2**20:.0f}" for t in ("off", "on")),
    ]


def _megabytes_per_s(bytes_per_s: float | None) -> str:
    return "n/a" if bytes_per_s is None else f"{bytes_per_s / 1e6:.0f} MB/s"


def _decode_cells(decode: dict) -> list[str]:
    """GB/s per CPU second, median (min-max), and per wall second; n/a where not measured."""
    if not decode:
        return ["n/a", "n/a"]
    per_cpu = {"median": decode["gb_per_s"], "min": decode["gb_per_s_min"]}
    per_cpu["max"] = decode["gb_per_s_max"]
    return [spread(per_cpu), f"{decode['wall_gb_per_s']['median']:.2f}"]


def _serving_cells(serving: dict | None) -> list[str]:
    """Rows/s off and on, their ratio, whether answers agree, pool bytes held off / on."""
    if serving is None:
        return ["n/a"] * 5
    rates = serving["rows_per_s"]
    return [
        spread(rates["off"], "{:.0f}"),
        spread(rates["on"], "{:.0f}"),
        f"{serving['ratio_on_off']:.2f}x",
        str(serving["predictions_equal"]),
        " / ".join(format_size(b) for b in serving["resident_bytes"].values()),
    ]


def _long_markdown(r: dict) -> str:
    d = r["delta_bits"]
    return render(
        LONG_REPORT,
        model=r["model"],
        steps=r["steps"],
        exact=format_size(r["exact_bytes"]),
        lossless=format_size(r["exact_lossless_bytes"]),
        parent=r["parent"],
        saving=f"{r['lossless_saving_vs_exact']:.1%}",
        unchanged=f"{d['unchanged_elements']:.1%}",
        exponent=f"{d['exponent_bits_flipped']:.3f}",
        mantissa=f"{d['mantissa_bits_flipped']:.2f}",
        mantissa_bits=d["mantissa_bits"],
    )
