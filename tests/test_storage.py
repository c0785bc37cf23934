"""Storage invariants: exact dedup, checksums, the buffer pool budget, reclaiming space."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightdb
from weightdb.errors import BudgetExceededError, CorruptPageError
from weightdb.storage import block_writer, page_files, read_ahead, store
from weightdb.storage.page_files import PageLocation
from weightdb.storage.page_format import HEADER


def small_model(rng, rows: int = 100, cols: int = 40) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((rows, cols)).astype(np.float32),
        "b": rng.standard_normal(cols).astype(np.float32),
    }


def test_importing_a_model_twice_adds_no_block_bytes(db, rng):
    arrays = small_model(rng)
    db.import_arrays("first", arrays)
    before = db.stats()
    db.import_arrays("second", arrays)
    after = db.stats()
    assert after["stored_bytes"] == before["stored_bytes"]
    assert after["distinct_blocks"] == before["distinct_blocks"]
    assert after["pages"] == before["pages"]
    assert after["logical_bytes"] == 2 * before["logical_bytes"]
    assert after["block_references"] == 2 * before["block_references"]


def test_identical_blocks_inside_one_model_are_stored_once(db):
    zeros = np.zeros((64, 32), np.float32)  # 4 x 4 blocks of 16 x 8, all equal
    db.import_arrays("z", {"a": zeros, "b": zeros.copy()})
    stats = db.stats()
    assert stats["distinct_blocks"] == 1
    assert stats["block_references"] == 32


def test_fine_tune_shares_unchanged_blocks(db, rng):
    base = small_model(rng, 64, 32)
    tuned = {k: v.copy() for k, v in base.items()}
    tuned["w"][0, 0] += 1.0  # touches exactly one 16x8 block
    db.import_arrays("base", base)
    blocks_before = db.stats()["distinct_blocks"]
    db.import_arrays("tuned", tuned)
    assert db.stats()["distinct_blocks"] == blocks_before + 1


def test_digest_collision_never_merges_different_blocks(db, rng, monkeypatch):
    monkeypatch.setattr(block_writer, "block_digest", lambda *args: b"same digest")
    first, second = small_model(rng), small_model(rng)
    db.import_arrays("a", first)
    db.import_arrays("b", second)
    assert np.array_equal(db.tensors("a")["w"].read(), first["w"])
    assert np.array_equal(db.tensors("b")["w"].read(), second["w"])


def test_blocks_are_read_only_zero_copy_views_of_the_page(db, rng):
    db.import_arrays("m", small_model(rng))
    tensor = db.tensors("m")["w"]
    with tensor.block(0, 0) as block:
        assert not block.flags.writeable
        page_id = int(tensor.locations[0, 0, 0])
        page = db.pool.pin(page_id)
        assert np.shares_memory(block, np.frombuffer(page.data, np.uint8))
        db.pool.unpin(page_id)
    assert all(pins == 0 for pins in db.pool.resident().values())


def corrupt_one_byte(db_path: Path, offset_in_page: int) -> str:
    page_file = next((db_path / "pages").iterdir())
    data = bytearray(page_file.read_bytes())
    data[offset_in_page] ^= 0x01
    page_file.write_bytes(bytes(data))
    return page_file.name


@pytest.mark.parametrize("offset", [HEADER.size + 3, 2000, 20])
def test_a_flipped_byte_fails_the_next_read_naming_the_page(tmp_path, rng, offset):
    path = tmp_path / "db"
    with weightdb.connect(path) as db:
        db.import_arrays("m", small_model(rng))
    name = corrupt_one_byte(path, offset)
    with weightdb.connect(path) as db:
        with pytest.raises(CorruptPageError, match=rf"page 1 in .*{name}"):
            db.tensors("m")["w"].read()
        with pytest.raises(CorruptPageError, match="page 1"):
            db.verify()


def test_verify_passes_on_a_healthy_database(db, rng):
    db.import_arrays("m", small_model(rng))
    assert db.verify() == db.stats()["pages"]


def test_removing_a_model_frees_only_its_own_blocks(db, rng):
    base = small_model(rng, 64, 32)
    tuned = {k: v.copy() for k, v in base.items()}
    tuned["w"][:16] += 1.0
    db.import_arrays("base", base)
    db.import_arrays("tuned", tuned)
    both = db.stats()
    db.remove_model("base")
    assert np.array_equal(db.tensors("tuned")["w"].read(), tuned["w"])
    after = db.stats()
    assert after["distinct_blocks"] == both["distinct_blocks"] - 4  # base's own first block row
    in_flight = db.tensors("tuned")["w"]  # planned before the removal
    db.remove_model("tuned")
    empty = db.stats()
    assert (empty["distinct_blocks"], empty["pages"]) == (0, 0)
    # Retired pages stay readable for whoever planned on them, until the grace period ends.
    db.pool.discard(set(db.pool.resident()))
    assert np.array_equal(in_flight.read(), tuned["w"])
    assert empty["page_files"] > 0


def test_retired_page_files_are_deleted_after_the_grace_period(db, rng, monkeypatch):
    db.import_arrays("m", small_model(rng))
    db.remove_model("m")
    assert any((db.path / "pages").iterdir())
    monkeypatch.setattr(store, "RETIRED_GRACE_SECONDS", 0.0)
    with db.store.writer_lock:
        db.store.collect_garbage()
    assert not any((db.path / "pages").iterdir())


# The largest page of the pool test database: 8 KiB of blocks plus header and directory.
PAGE = 8192 + 64 + 48 * 64


def pool_db(tmp_path: Path, rng, budget: int):
    path = tmp_path / "pooldb"
    if not path.exists():
        with weightdb.connect(path, settings=weightdb.Settings(16, 8, 8192)) as db:
            db.import_arrays("m", {"w": rng.standard_normal((400, 64)).astype(np.float32)})
    return weightdb.connect(path, budget=budget)


@settings(max_examples=25, deadline=None)
@given(
    budget_pages=st.integers(min_value=2, max_value=6),
    accesses=st.lists(st.tuples(st.integers(0, 24), st.integers(0, 7), st.booleans()), max_size=60),
)
def test_pool_never_exceeds_its_budget_under_random_pinned_access(
    tmp_path_factory, budget_pages, accesses
):
    rng = np.random.default_rng(0)
    tmp_path = tmp_path_factory.mktemp("pool")
    expected = rng.standard_normal((400, 64)).astype(np.float32)
    with pool_db(tmp_path, np.random.default_rng(0), budget=budget_pages * PAGE) as db:
        tensor = db.tensors("m")["w"]
        held = []
        for i, j, keep in accesses:
            try:
                context = tensor.block(i, j)
                block = context.__enter__()
            except BudgetExceededError:
                assert len(held) >= budget_pages - 1  # only a full pinned set may refuse
                continue
            r0, r1, c0, c1 = tensor.layout.bounds(i, j)
            assert np.array_equal(block, expected[r0:r1, c0:c1])
            if keep and len(held) < budget_pages:
                held.append(context)
            else:
                context.__exit__(None, None, None)
            stats = db.pool.stats()
            assert stats.resident_bytes <= budget_pages * PAGE
        for context in held:
            context.__exit__(None, None, None)
        assert all(pins == 0 for pins in db.pool.resident().values())


def test_a_request_larger_than_the_budget_fails_naming_the_budget_needed(tmp_path, rng):
    needed = r"raise the budget to at least \d+ bytes"
    with (
        pool_db(tmp_path, rng, budget=1000) as db,
        pytest.raises(BudgetExceededError, match=needed),
    ):
        db.tensors("m")["w"].read()


def test_pinned_pages_are_never_evicted(tmp_path, rng):
    with pool_db(tmp_path, rng, budget=2 * PAGE) as db:
        tensor = db.tensors("m")["w"]
        with tensor.block(0, 0):
            pinned_page = int(tensor.locations[0, 0, 0])
            for i in range(tensor.layout.grid[0]):
                for j in range(tensor.layout.grid[1]):
                    with tensor.block(i, j):
                        assert pinned_page in db.pool.resident()
        assert db.pool.stats().evictions > 0


def test_prefetch_asks_for_missing_pages_a_window_ahead_and_changes_nothing(
    tmp_path, rng, monkeypatch
):
    """The pages a request will pin are asked of storage ahead of the pins, at most a window's
    bytes at a time (more when half the pool's free room is more), each once, resident ones
    never; the pool itself does not change."""
    asked = []
    monkeypatch.setattr(store.PageReader, "advise", lambda self, locations: asked.extend(locations))
    monkeypatch.setattr(read_ahead, "WINDOW_BYTES", 3 * PAGE)
    with pool_db(tmp_path, rng, budget=5 * PAGE) as db:  # half its free room: under a window
        tensor = db.tensors("m")["w"]
        pages = tensor.pages()
        with db.pool.pinned(pages[1]):
            before = db.pool.stats()
            db.pool.prefetch(pages)
            assert db.pool.stats() == before  # nothing read, requested or made resident
            missing = [p for p in pages if p != pages[1]]
            assert [location.page_id for location in asked] == missing[:3]
            for page_id in missing:
                with db.pool.pinned(page_id):
                    pass
        assert [location.page_id for location in asked] == missing


def test_read_ahead_keeps_a_window_skips_what_is_present_and_lets_a_gather_go_first():
    lengths = {page: 10 for page in range(10)}
    ahead = read_ahead.ReadAhead(lambda page: PageLocation(page, "f", 0, lengths[page], 0), 30)
    present = {1}

    def ask(locations):
        return [location.page_id for location in locations]

    absent = lambda page: page not in present  # noqa: E731
    full = 0  # the pool has no free room: the least window
    assert ask(ahead.expect([0, 1, 2, 3, 4, 5], absent, full)) == [0, 2, 3]
    assert ask(ahead.arrived(2, absent, full)) == [4]  # loaded out of order: room for one more
    assert ask(ahead.expect([8, 9], absent, full, first=True)) == []  # the window is full
    present.update({0, 3})
    assert ask(ahead.arrived(0, absent, full)) == [8]
    assert ask(ahead.arrived(3, absent, full)) == [9]
    assert ask(ahead.arrived(8, absent, full)) == [5]
    assert ask(ahead.expect([7, 4, 6], absent, full)) == [7, 4, 6]  # a new run, a new window
    assert ask(ahead.expect([0, 2, 3, 4, 5, 6], absent, 100)) == [2, 4, 5, 6]  # half of 100
    assert ask(ahead.expect(range(10), absent, None)) == [2, 4, 5, 6, 7, 8, 9]  # no budget


def test_a_page_being_read_blocks_neither_other_pins_nor_a_second_read(tmp_path, rng, monkeypatch):
    """While one thread reads a page, others pin resident pages; a second thread asking for
    the same page waits for that read instead of reading it again."""
    import threading

    reads, release = [], threading.Event()
    real_read = store.PageReader.read

    def slow_read(self, location):
        reads.append(location.page_id)
        if location.page_id == slow:
            assert release.wait(10)
        return real_read(self, location)

    monkeypatch.setattr(store.PageReader, "read", slow_read)
    with pool_db(tmp_path, rng, budget=None) as db:
        tensor = db.tensors("m")["w"]
        slow, resident = tensor.pages()[:2]
        db.pool.pin(resident)
        pinned = []
        first = threading.Thread(target=lambda: pinned.append(db.pool.pin(slow)))
        second = threading.Thread(target=lambda: pinned.append(db.pool.pin(slow)))
        first.start()
        while slow not in reads:
            threading.Event().wait(0.01)
        second.start()
        assert db.pool.pin(resident) is not None  # not held up by the read in flight
        release.set()
        first.join(10)
        second.join(10)
        assert reads.count(slow) == 1 and len(pinned) == 2 and pinned[0] is pinned[1]
        assert db.pool.resident()[slow] == 2
        stats = db.pool.stats()
        assert (stats.misses, stats.hits) == (2, 2)  # each page read once; the waiter hit


def test_prefetch_of_a_page_whose_file_is_gone_is_only_a_missed_hint(tmp_path, rng, monkeypatch):
    """No error, and the pages after it are still asked for."""
    advised = []
    real_advise = page_files.os.posix_fadvise

    def recording(fd, offset, length, advice):
        advised.append(offset)
        real_advise(fd, offset, length, advice)

    monkeypatch.setattr(page_files.os, "posix_fadvise", recording)
    with pool_db(tmp_path, rng, budget=None) as db:
        tensor = db.tensors("m")["w"]
        missing = PageLocation(-1, "seg-99999999.pages", 0, PAGE, 0)
        present = db.store.locate_page(tensor.pages()[0])
        db.store.reader.advise([missing, present])
        assert advised == [present.offset]
        assert np.array_equal(tensor.read()[:2], tensor.take_rows(np.arange(2)))
