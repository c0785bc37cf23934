"""Repacking: rewrite every block into new pages laid out by a packing algorithm, atomically.

New pages go to new segment files; one catalog transaction then points every block at its new
page and retires the old pages (still readable for in-flight requests, deleted after the grace
period). A crash before the commit leaves the old layout and orphaned files that the next
writer removes; after it, the new layout. Either way every model exports bit-identically.

The catalog records one page per block, so a layout must store each block once. Without
copies a page can only hold blocks of one sharing signature (else some reader of the page
would read a block it does not use), and ``greedy1`` is then optimal in total pages and in
pages read per model. Algorithms that copy shared blocks into several pages are refused here.
"""

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightdb.errors import WeightDBError
from weightdb.packing import pack
from weightdb.storage.page_files import PageLocation, SegmentWriter
from weightdb.storage.page_format import PageBuilder
from weightdb.storage.reclaim import retire_pages

if TYPE_CHECKING:
    import sqlite3

    from weightdb.database import Database

DEFAULT_REPACK_ALGORITHM = "greedy1"
NOMINAL_ITEMSIZE = 4  # float32: the block size that page capacity in blocks is counted in


@dataclass
class RepackReport:
    algorithm: str
    blocks_per_page: int
    pages_before: int
    pages_after: int
    lower_bound_pages: int
    pages_read_before: dict[str, dict[str, int]]
    pages_read_after: dict[str, dict[str, int]]
    seconds: float

    def to_json(self) -> dict:
        return {**vars(self), "gap_to_lower_bound": self.pages_after - self.lower_bound_pages}


def model_blocks(conn: "sqlite3.Connection") -> dict[str, list[int]]:
    """Every model's distinct block ids: the packing instance of the database."""
    blocks: dict[str, set[int]] = defaultdict(set)
    for name, block_id in conn.execute(
        "SELECT m.name, tb.block_id FROM tensor_blocks tb JOIN tensors t USING (tensor_id) "
        "JOIN models m USING (model_id)"
    ):
        blocks[name].add(block_id)
    return {name: sorted(ids) for name, ids in sorted(blocks.items())}


def pages_read(conn: "sqlite3.Connection") -> dict[str, dict[str, int]]:
    """Per model, the distinct pages it reads to load all of its weights, and their bytes
    (which include any foreign blocks those pages hold)."""
    rows = conn.execute(
        "SELECT name, COUNT(*), SUM(length) FROM ("
        "  SELECT DISTINCT m.name, p.page_id, p.length FROM models m"
        "  JOIN tensors t USING (model_id) JOIN tensor_blocks tb USING (tensor_id)"
        "  JOIN blocks b USING (block_id) JOIN pages p ON p.page_id = b.page_id"
        ") GROUP BY name ORDER BY name"
    ).fetchall()
    return {name: {"pages": pages, "bytes": nbytes} for name, pages, nbytes in rows}


def blocks_per_page(db: "Database") -> int:
    rows, cols = db.settings.block_shape
    return max(1, db.settings.page_size // (rows * cols * NOMINAL_ITEMSIZE))


def repack(
    db: "Database",
    algorithm: str = DEFAULT_REPACK_ALGORITHM,
    frequencies: dict[str, float] | None = None,
) -> RepackReport:
    start = time.perf_counter()
    with db.writer_lock:
        db.collect_garbage()
        conn = db.catalog.conn
        models = model_blocks(conn)
        capacity = blocks_per_page(db)
        layout = pack(models, capacity, frequencies, algorithm) if models else []
        copied = [b for b, n in Counter(b for page in layout for b in page).items() if n > 1]
        if copied:
            raise WeightDBError(
                f"algorithm {algorithm!r} stores {len(copied)} blocks on several pages, which "
                f"the catalog (one page per block) cannot record; use {DEFAULT_REPACK_ALGORITHM}"
                ", the best layout without copies"
            )
        before = pages_read(conn)
        old_pages = {p for (p,) in conn.execute("SELECT page_id FROM pages")}
        distinct = sum(len(page) for page in layout)
        new_locations, new_pages = _write_layout(db, layout)
        with db.catalog.transaction() as tx:
            tx.executemany(
                "INSERT INTO pages(page_id, file, offset, length, checksum) VALUES (?, ?, ?, ?, ?)",
                [(p.page_id, p.file, p.offset, p.length, p.checksum) for p in new_pages],
            )
            tx.executemany(
                "UPDATE blocks SET page_id = ?, slot = ? WHERE block_id = ?",
                [(page, slot, block) for block, (page, slot) in new_locations.items()],
            )
            retire_pages(tx, old_pages)
            db.catalog.bump_layout_generation(tx)
        db.pool.discard(old_pages)
        after = pages_read(conn)
    return RepackReport(
        algorithm,
        capacity,
        len(old_pages),
        len(new_pages),
        -(-distinct // capacity),
        before,
        after,
        time.perf_counter() - start,
    )


def _write_layout(
    db: "Database", layout: list[list[int]]
) -> tuple[dict[int, tuple[int, int]], list[PageLocation]]:
    """Copy every block into the new pages; a layout page whose blocks exceed the page size
    in bytes (wide dtypes) continues on a further page of the same blocks' signature."""
    conn = db.catalog.conn
    where = {
        block_id: (dtype, rows, cols, nbytes, page_id, slot)
        for block_id, dtype, rows, cols, nbytes, page_id, slot in conn.execute(
            "SELECT block_id, dtype, rows, cols, nbytes, page_id, slot FROM blocks"
        )
    }
    _, next_page, next_segment = db.next_ids()
    segments = SegmentWriter(db.pages_dir, next_segment, db.settings.segment_bytes)
    builder = PageBuilder(db.settings.page_size)
    locations: dict[int, tuple[int, int]] = {}
    written: list[PageLocation] = []

    def flush() -> None:
        nonlocal next_page
        if len(builder):
            written.append(segments.append(next_page, *builder.build(next_page)))
            next_page += 1
            builder.reset()

    try:
        for page in layout:
            for block_id in page:
                dtype, rows, cols, nbytes, old_page, old_slot = where[block_id]
                if not builder.fits(nbytes):
                    flush()
                with db.pool.pinned(old_page) as source:
                    builder.reserve(nbytes)[:] = source.block_bytes(old_slot)
                locations[block_id] = (
                    next_page,
                    builder.commit(block_id, dtype, rows, cols, nbytes),
                )
            flush()
        segments.finish()
    except BaseException:
        segments.abort()
        raise
    return locations, written
