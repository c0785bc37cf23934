"""A full check of a database: the catalog file, every model's rows against their digests, and
every page read from disk and verified against the catalog, block by block.

Checksums cover the bytes as stored; a coded block (the lossless tier) is also decoded and its
digest compared with the catalog's, so a wrong base or a codec bug cannot pass unnoticed.
"""

from typing import TYPE_CHECKING

from weightdb.errors import CatalogCorruptError, CorruptPageError
from weightdb.storage import catalog_digest
from weightdb.storage.block_writer import block_digest
from weightdb.storage.catalog import damaged
from weightdb.storage.page_images import block_content

if TYPE_CHECKING:
    from weightdb.database import Database, Progress

SHOWN = 10
"""Damaged models and tensors named in one error; the count says how many more."""


def verify_database(db: "Database", progress: "Progress | None" = None) -> int:
    """Check the catalog, then every page; raise on the first problem found, naming what is
    damaged (by model and tensor for catalog rows). Returns the pages checked."""
    conn = db.catalog.conn
    problems = [row for (row,) in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise damaged(db.catalog.path, problems[0])
    damage = catalog_digest.verify(conn)
    if damage:
        more = f" and {len(damage) - SHOWN} more" if len(damage) > SHOWN else ""
        raise CatalogCorruptError(
            f"catalog rows do not match their digests for {', '.join(map(str, damage[:SHOWN]))}"
            f"{more}: catalog.sqlite was changed outside weightdb or is damaged; "
            f"{catalog_digest.RESTORE}"
        )
    return _verify_pages(db, progress)


def _verify_pages(db: "Database", progress: "Progress | None") -> int:
    """Check checksums, headers, that each block and each copy of a block sits where the
    catalog says, and that its bytes match the block's recorded SHA-256."""
    conn = db.catalog.conn
    checked = 0
    total = conn.execute("SELECT COALESCE(SUM(length), 0) FROM pages").fetchone()[0]
    for (page_id,) in conn.execute("SELECT page_id FROM pages ORDER BY page_id").fetchall():
        location = db.locate_page(page_id)
        page = db.reader.read(location)
        for block_id, slot, nbytes, digest, dtype, rows, cols in conn.execute(
            "SELECT block_id, slot, nbytes, digest, dtype, rows, cols FROM blocks "
            "WHERE page_id = ? UNION "
            "SELECT block_id, c.slot, b.nbytes, b.digest, b.dtype, b.rows, b.cols "
            "FROM block_copies c JOIN blocks b USING (block_id) WHERE c.page_id = ?",
            (page_id, page_id),
        ):
            entry = page.entries[slot] if slot < len(page.entries) else None
            if entry is None or entry.block_id != block_id or entry.nbytes != nbytes:
                raise CorruptPageError(
                    f"page {page_id} in {location.file} does not hold block {block_id} at "
                    f"slot {slot} as the catalog records"
                )
            content = block_content(page, slot, db.pool.bases)
            if block_digest(dtype, rows, cols, content) != digest:
                if entry.coded:
                    raise CorruptPageError(
                        f"block {block_id} on page {page_id} in {location.file} decodes to "
                        "other bytes than were stored; restore the database from a backup"
                    )
                raise CatalogCorruptError(
                    f"block {block_id} on page {page_id} in {location.file} does not match its "
                    f"recorded SHA-256; it is read by {_readers(db, block_id)}: "
                    f"{catalog_digest.RESTORE}"
                )
        checked += 1
        if progress:
            progress(location.length, total)
    return checked


def _readers(db: "Database", block_id: int) -> str:
    rows = db.catalog.conn.execute(
        "SELECT DISTINCT m.name, t.name FROM tensor_blocks tb JOIN tensors t USING (tensor_id) "
        "JOIN models m USING (model_id) WHERE tb.block_id = ? ORDER BY m.name, t.name LIMIT ?",
        (block_id, SHOWN),
    ).fetchall()
    return ", ".join(f"model {m!r} tensor {t!r}" for m, t in rows) or "no model"
