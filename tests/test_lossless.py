"""The lossless tier: coded blocks read back bit-exact on every dtype, through export, panels,
predictions, compress, repack, removal of a parent and a SIGKILL during compress."""

import json
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from fine_tunes import EVERY_DTYPE, base_and_tuned
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file

import weightdb
from weightdb.errors import CorruptPageError
from weightdb.storage import codecs, page_format
from weightdb.storage.page_format import COLUMN_MAJOR, ROW_MAJOR, PageBuilder, parse_page
from weightdb.storage.page_images import decode_page
from weightdb.storage.settings import Settings

SETTINGS = Settings(block_rows=32, block_cols=32, page_size=32 * 1024, lossless=True)


@pytest.mark.parametrize("dtype", EVERY_DTYPE, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_bit_exact_through_coding_and_export(tmp_path, dtype):
    rng = np.random.default_rng(3)
    base, tuned = base_and_tuned(rng, dtype, (70, 90))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.import_arrays("base", {"w": base, "v": base[:5].T.copy()})
        db.import_arrays("tuned", {"w": tuned, "v": tuned[:5].T.copy()})
        assert db.parent("tuned") == "base"
        codecs_used = {
            c for (c,) in db.store.catalog.conn.execute("SELECT codec FROM block_codings")
        }
        if np.dtype(dtype).itemsize > 1 and np.dtype(dtype).kind == "f":
            assert codecs.PAGE_XOR_PLANES in codecs_used
        db.pool.clear()
        for name, array in (("base", base), ("tuned", tuned)):
            out = tmp_path / f"{name}.safetensors"
            db.export_model(name, out)
            got = load_file(out)
            assert got["w"].dtype == array.dtype and got["w"].tobytes() == array.tobytes()
            assert got["v"].tobytes() == np.ascontiguousarray(array[:5].T).tobytes()
        assert db.verify() == db.stats()["pages"]


def test_codecs_are_chosen_by_what_a_block_saves_and_fall_back_to_raw():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4096).astype(np.float32)
    tuned = base + rng.standard_normal(4096).astype(np.float32) * 1e-5
    data, against = tuned.view(np.uint8), base.view(np.uint8)
    assert codecs.choose(data, 4, against) == codecs.PAGE_XOR_PLANES
    noise = rng.integers(0, 256, data.nbytes, dtype=np.uint8)
    assert codecs.choose(noise, 1, None) == codecs.RAW
    assert codecs.choose(data, 4, noise) == codecs.PAGE_PLANES  # an unrelated base
    encoded = codecs.encode(data, 4, against)
    assert len(encoded) < 0.7 * data.nbytes
    out = np.empty(data.nbytes, np.uint8)
    codecs.decode(encoded, out, 4, against)
    assert out.tobytes() == data.tobytes()


def test_a_coded_page_decodes_to_the_image_a_raw_page_has_so_runs_read_the_same():
    rng = np.random.default_rng(1)
    blocks = [(rng.standard_normal((16, 8)) * 1e-3).astype(np.float32) for _ in range(3)]
    pages = []
    for coded in (False, True):
        builder = PageBuilder(8192)
        for block_id, block in enumerate(blocks, 1):
            space = builder.reserve(block.nbytes)
            np.copyto(np.frombuffer(space, np.float32).reshape(8, 16), block.T)
            codec, encoded = codecs.RAW, None
            if coded:
                codec, encoded = codecs.PLANES, codecs.encode(np.frombuffer(space, np.uint8), 4)
                space[: len(encoded)] = encoded
            stored = None if encoded is None else len(encoded)
            builder.commit(block_id, "float32", 16, 8, block.nbytes, COLUMN_MAJOR, codec, stored)
        pieces, length, _ = builder.build(7)
        page = parse_page(b"".join(bytes(p) for p in pieces), 7, "test")
        assert page.coded == coded and length == sum(len(p) for p in pieces)
        pages.append(decode_page(page, lambda entry: None))
    raw, image = pages
    assert image.run(range(3), COLUMN_MAJOR) is not None
    assert image.run(range(3), COLUMN_MAJOR).tobytes() == raw.run(range(3), COLUMN_MAJOR).tobytes()
    assert image.run(range(3), ROW_MAJOR) is None
    for slot, block in enumerate(blocks):
        assert np.array_equal(image.block(slot), block)
        assert image.block_content(slot) == block.tobytes()
    assert image.nbytes < raw.nbytes  # the image, without the directory


def perturbed(source: Path, target: Path, scale: float, seed: int) -> Path:
    """An ONNX model whose float initializers differ from ``source``'s in their low bits."""
    model = onnx.load(source)
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            noise = rng.standard_normal(array.shape).astype(np.float32) * scale
            init.CopyFrom(numpy_helper.from_array(array * (1 + noise), init.name))
    onnx.save(model, target)
    return target


def test_predictions_are_identical_with_the_tier_on_and_off(tmp_path, exported_models):
    tuned = perturbed(exported_models["mlp"], tmp_path / "tuned.onnx", 1e-3, 0)
    x = {"x": np.random.default_rng(2).standard_normal((5, 100)).astype(np.float32)}
    outputs = {}
    for lossless in (False, True):
        settings = Settings(block_rows=16, block_cols=8, page_size=8192, lossless=lossless)
        with weightdb.connect(tmp_path / f"db-{lossless}", settings=settings) as db:
            db.import_model(exported_models["mlp"], "base")
            db.import_model(tuned, "tuned", parent="base")
            deltas = db.store.catalog.conn.execute(
                "SELECT COUNT(*) FROM block_codings WHERE base_block_id IS NOT NULL"
            ).fetchone()[0]
            assert (deltas > 0) == lossless
            outputs[lossless] = db.predict("tuned", x)
    for name, value in outputs[False].items():
        assert value.tobytes() == outputs[True][name].tobytes()


def family(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    base = {f"l{i}": (rng.standard_normal((96, 64)) * 0.05).astype(np.float32) for i in range(3)}

    def tune(scale: float) -> dict[str, np.ndarray]:
        return {
            k: v * (1 + rng.standard_normal(v.shape).astype(np.float32) * scale)
            for k, v in base.items()
        }

    return {"base": base, "a": tune(1e-3), "b": tune(1e-3), "c": {**tune(1e-3), "l0": base["l0"]}}


def assert_intact(db, models: dict) -> None:
    db.pool.clear()
    for name, arrays in models.items():
        stored = db.tensors(name)
        for tensor, array in arrays.items():
            assert stored[tensor].read().tobytes() == array.tobytes(), (name, tensor)
    assert db.verify() == db.stats()["pages"]


def test_compress_codes_an_existing_database_and_finds_parents(tmp_path):
    models = family(np.random.default_rng(5))
    raw = Settings(block_rows=32, block_cols=32, page_size=32 * 1024)
    with weightdb.connect(tmp_path / "db", settings=raw) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
        before = db.stats()
        assert before["saved_bytes_by_tier"]["lossless"] == 0
        report = db.compress()
        after = db.stats()
        assert report.delta_blocks > 0 and report.page_bytes_after < report.page_bytes_before
        assert after["stored_bytes"] < 0.8 * before["stored_bytes"]
        saved = after["saved_bytes_by_tier"]
        assert saved["lossless"] == before["stored_bytes"] - after["stored_bytes"]
        assert saved["exact"] == before["saved_bytes_by_tier"]["exact"] > 0  # c shares l0
        assert db.parent("c") == "base"  # shares exact blocks with base only
        assert db.parent("a") is not None and db.parent("base") is None
        assert_intact(db, models)
        db.compress(lossless=False)
        assert db.stats()["stored_bytes"] == before["stored_bytes"]
        assert_intact(db, models)


def test_removing_a_parent_keeps_the_bases_of_its_children_until_they_go(tmp_path):
    models = family(np.random.default_rng(6))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays, parent=None if name == "base" else "base")
        db.remove_model("base")
        del models["base"]
        assert db.parent("a") is None  # the lineage row stays, without a parent
        assert_intact(db, models)
        db.pack()
        assert_intact(db, models)
        for name in list(models):
            db.remove_model(name)
        assert db.store.catalog.conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 0


def test_verify_decodes_coded_blocks_and_checks_their_digests(tmp_path):
    models = family(np.random.default_rng(7))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
        (block_id,) = db.store.catalog.conn.execute(
            "SELECT block_id FROM block_codings WHERE base_block_id IS NOT NULL LIMIT 1"
        ).fetchone()
        with db.store.catalog.transaction() as conn:
            conn.execute("UPDATE blocks SET digest = zeroblob(32) WHERE block_id = ?", (block_id,))
            # The rows stay consistent with their digests: only decoding can tell.
            db.store.catalog.record_digests(
                [m for (m,) in conn.execute("SELECT model_id FROM models")]
            )
        with pytest.raises(CorruptPageError, match=f"block {block_id} .* decodes to other bytes"):
            db.verify()


COMPRESSOR = """
import os, signal, sys, weightdb
from weightdb.storage import page_files
from weightdb.storage.catalog import Catalog
path, point = sys.argv[1:3]
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if point == "mid-write":
    append, appended = page_files.SegmentWriter.append, []
    def append_or_die(*args, **kwargs):
        appended.append(1)
        if len(appended) == 3:
            die()
        return append(*args, **kwargs)
    page_files.SegmentWriter.append = append_or_die
elif point == "pages written":
    page_files.SegmentWriter.finish = die
elif point == "inside the commit":
    Catalog.retire_pages = die
with weightdb.connect(path) as db:
    db.compress()
"""


@pytest.mark.parametrize("point", ["mid-write", "pages written", "inside the commit"])
def test_sigkill_during_compress_leaves_the_previous_state(tmp_path, point):
    models = family(np.random.default_rng(8))
    raw = Settings(block_rows=32, block_cols=32, page_size=32 * 1024)
    with weightdb.connect(tmp_path / "db", settings=raw) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
        before = db.stats()["stored_bytes"]
    process = subprocess.Popen([sys.executable, "-c", COMPRESSOR, str(tmp_path / "db"), point])
    assert process.wait(timeout=120) == -signal.SIGKILL
    with weightdb.connect(tmp_path / "db", create=False) as db:
        assert db.stats()["stored_bytes"] == before
        assert db.stats()["saved_bytes_by_tier"]["lossless"] == 0
        assert_intact(db, models)
        db.compress()  # and the next writer compresses it
        assert db.stats()["stored_bytes"] < before
        assert_intact(db, models)


def test_pages_of_formats_1_and_2_read_as_raw_pages():
    block = np.arange(128, dtype=np.float32).reshape(16, 8)
    builder = PageBuilder(8192)
    np.copyto(np.frombuffer(builder.reserve(block.nbytes), np.float32).reshape(8, 16), block.T)
    builder.commit(5, "float32", 16, 8, block.nbytes, COLUMN_MAJOR)
    (data, _), _, _ = builder.build(3)
    for version, order in ((1, ROW_MAJOR), (2, COLUMN_MAJOR)):
        entry = page_format.RAW_ENTRY.pack(5, page_format.DATA_START, block.nbytes, 16, 8, 1, order)
        page = bytearray(bytes(data) + entry)
        page_format.HEADER.pack_into(
            page, 0, page_format.MAGIC, 0, version, 0, 1, 3, len(page), len(data)
        )
        struct.pack_into("<I", page, 8, zlib.crc32(memoryview(page)[12:]))
        parsed = parse_page(bytes(page), 3, "test")
        assert not parsed.coded and parsed.entries[0].stored_nbytes == block.nbytes
        expected = block if version == 2 else block.T.copy().reshape(16, 8)
        assert np.array_equal(parsed.block(0), expected)


def page_ids(db: weightdb.Database, query: str) -> set[int]:
    """The page ids a catalog query selects."""
    return {page_id for (page_id,) in db.store.catalog.conn.execute(query)}


def test_the_pool_holds_decoded_images_and_counts_them_against_its_budget(tmp_path):
    models = family(np.random.default_rng(9))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
        coded = page_ids(
            db, "SELECT DISTINCT b.page_id FROM blocks b JOIN block_codings USING (block_id)"
        )
        smallest_budget = 3 * (page_format.DATA_START + SETTINGS.page_size)
    with weightdb.connect(tmp_path / "db", budget=smallest_budget) as db:
        for name, arrays in models.items():
            stored = db.tensors(name)
            for tensor, array in arrays.items():
                assert stored[tensor].read().tobytes() == array.tobytes()
                resident = db.pool.resident()
                held = 0
                for page_id in resident:
                    with db.pool.pinned(page_id) as page:
                        assert not page.coded or page_id not in coded
                        held += page.nbytes
                        if page_id in coded:  # an image, larger than the page on disk
                            assert page.nbytes > db.store.locate_page(page_id).length
                stats = db.pool.stats()
                assert stats.resident_bytes == held + stats.coded_bytes <= smallest_budget


class Requests:
    """A pool's request recorder: every (page, model) asked for."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str | None]] = []

    def record(self, page_id: int, model: str | None) -> None:
        self.seen.append((page_id, model))

    def start_query(self) -> int:
        return 0


def test_the_base_pages_a_models_read_decodes_with_are_requests_of_that_model(tmp_path):
    """The policy learns that a fine-tune reads its parent's pages: without it, they looked
    unread and were evicted between the fine-tunes that all decode against them."""
    models = family(np.random.default_rng(11))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
        base_pages = page_ids(
            db,
            "SELECT DISTINCT b.page_id FROM blocks b JOIN block_codings c "
            "ON c.base_block_id = b.block_id",
        )
        own_pages = page_ids(
            db,
            "SELECT DISTINCT b.page_id FROM blocks b JOIN tensor_blocks USING (block_id) "
            "JOIN tensors USING (tensor_id) JOIN models m USING (model_id) WHERE m.name = 'a'",
        )
        assert base_pages and not base_pages & own_pages
        db.pool.clear()
        db.pool.recorder = requests = Requests()
        for tensor in db.tensors("a").values():
            tensor.read()
        assert {model for _, model in requests.seen} == {"a"}
        assert base_pages <= {page for page, _ in requests.seen}


def test_cli_imports_with_a_parent_compresses_and_shows_parents_and_tiers(tmp_path):
    rng = np.random.default_rng(10)
    models = family(rng)
    paths = {}
    for name in ("base", "a"):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(models[name], paths[name])
    db = str(tmp_path / "db")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "weightdb", "--db", db, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("import", str(paths["base"]), "--name", "base").returncode == 1  # no database
    subprocess.run([sys.executable, "-m", "weightdb", "init", db, "--block-shape", "32,32"])
    assert cli("import", str(paths["base"]), "--name", "base").returncode == 0
    result = cli("import", str(paths["a"]), "--name", "a", "--parent", "base")
    assert result.returncode == 0, result.stderr
    listing = {m["name"]: m["parent"] for m in json.loads(cli("ls", "--json").stdout)}
    assert listing == {"base": None, "a": "base"}
    row_of_a = next(line for line in cli("ls").stdout.splitlines() if line.startswith("│ a "))
    assert row_of_a.split("│")[2].strip() == "base"  # the parent column
    report = json.loads(cli("compress", "--json").stdout)
    assert report["delta_blocks"] > 0
    tiers = json.loads(cli("stats", "--json").stdout)["saved_bytes_by_tier"]
    assert tiers["lossless"] > 0 and set(tiers) == {"exact", "lossless", "approximate"}
    missing = cli("import", str(paths["a"]), "--name", "b", "--parent", "nope")
    assert missing.returncode == 1 and "no model named 'nope'" in missing.stderr


def test_evicted_images_keep_their_coded_pages_so_a_coded_working_set_is_not_read_again(
    tmp_path,
):
    """A budget that holds every coded page but not every image: the second pass over the
    models decodes the pages it kept instead of reading storage, within the budget."""
    models = family(np.random.default_rng(9))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name, arrays in models.items():
            db.import_arrays(name, arrays)
        lengths = [length for _, length in db.store.catalog.live_pages()]
    image = page_format.DATA_START + SETTINGS.page_size
    budget = sum(lengths) + 2 * image
    assert budget < len(lengths) * image  # the decoded working set does not fit

    def one_pass(db) -> None:
        for name, arrays in models.items():
            for tensor, array in arrays.items():
                assert db.tensors(name)[tensor].read().tobytes() == array.tobytes()
            assert db.pool.stats().resident_bytes <= budget

    with weightdb.connect(tmp_path / "db", budget=budget) as db:
        one_pass(db)
        first = db.pool.stats()
        one_pass(db)
        second = db.pool.stats()
    assert second.misses > first.misses  # images were evicted and needed again...
    assert second.bytes_read == first.bytes_read  # ...and came from the coded pages kept
    assert second.decoded_again - first.decoded_again == second.misses - first.misses


def assert_stream_bytes_add_up(db: weightdb.Database) -> None:
    """Every coded block's stored bytes (``block_codings``, what ``stats`` counts) are its
    share of the bytes its page stores it in: a page stream's blocks add up to the stream."""
    store = db.store
    rows = store.catalog.conn.execute(
        "SELECT b.page_id, b.slot, c.stored_nbytes FROM block_codings c JOIN blocks b "
        "USING (block_id)"
    ).fetchall()
    by_page: dict[int, list[tuple[int, int]]] = {}
    for page_id, slot, stored in rows:
        by_page.setdefault(page_id, []).append((slot, stored))
    assert by_page
    for page_id, blocks in by_page.items():
        page = store.reader.read(store.locate_page(page_id))
        streams: dict[int, int] = {}  # stored offset -> bytes counted for its blocks
        for slot, stored in blocks:
            streams[page.entries[slot].stored_offset] = (
                streams.get(page.entries[slot].stored_offset, 0) + stored
            )
        lengths = {e.stored_offset: e.stored_nbytes for e in page.entries if e.coded}
        assert streams == {offset: lengths[offset] for offset in streams}, page_id


def coded_pages(db: weightdb.Database) -> set[tuple[int, ...]]:
    """The coded blocks of each page, as sets of block ids."""
    groups: dict[int, list[int]] = {}
    for page_id, block_id in db.store.catalog.conn.execute(
        "SELECT b.page_id, b.block_id FROM block_codings JOIN blocks b USING (block_id)"
    ):
        groups.setdefault(page_id, []).append(block_id)
    return {tuple(sorted(blocks)) for blocks in groups.values()}


def test_the_stored_bytes_of_coded_blocks_follow_them_to_their_new_pages(tmp_path):
    """A repack codes stream blocks again in their new page's stream; what ``stats`` counts of
    each block is then its share of that stream, not of the one compress wrote."""
    models = family(np.random.default_rng(9))
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        for name in ("a", "c", "base", "b"):  # import order is page order; c shares base's l0
            db.import_arrays(name, models[name])
        db.compress()
        assert_stream_bytes_add_up(db)
        compressed = coded_pages(db)
        db.pack(force=True)
        assert coded_pages(db) != compressed  # blocks were grouped anew
        assert_stream_bytes_add_up(db)
        assert_intact(db, models)
