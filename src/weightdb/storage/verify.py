"""A full check of a database: every page read from disk and verified against the catalog.

Checksums cover the bytes as stored; a coded block (the lossless tier) is also decoded and its
digest compared with the catalog's, so a wrong base or a codec bug cannot pass unnoticed.
"""

from typing import TYPE_CHECKING

from weightdb.errors import CorruptPageError
from weightdb.storage.block_writer import block_digest
from weightdb.storage.page_images import block_content

if TYPE_CHECKING:
    from weightdb.database import Database, Progress


def verify_pages(db: "Database", progress: "Progress | None" = None) -> int:
    """Check checksums, headers and that each block and each copy of a block sits where the
    catalog says; raise on the first damaged page, naming it. Returns the pages checked."""
    conn = db.catalog.conn
    checked = 0
    total = conn.execute("SELECT COALESCE(SUM(length), 0) FROM pages").fetchone()[0]
    for (page_id,) in conn.execute("SELECT page_id FROM pages ORDER BY page_id").fetchall():
        location = db.locate_page(page_id)
        page = db.reader.read(location)
        for block_id, slot, nbytes, digest, dtype, rows, cols in conn.execute(
            "SELECT block_id, slot, nbytes, digest, dtype, rows, cols FROM blocks "
            "WHERE page_id = ? UNION SELECT block_id, c.slot, b.nbytes, b.digest, b.dtype, "
            "b.rows, b.cols FROM block_copies c JOIN blocks b USING (block_id) WHERE c.page_id = ?",
            (page_id, page_id),
        ):
            entry = page.entries[slot] if slot < len(page.entries) else None
            if entry is None or entry.block_id != block_id or entry.nbytes != nbytes:
                raise CorruptPageError(
                    f"page {page_id} in {location.file} does not hold block {block_id} at "
                    f"slot {slot} as the catalog records"
                )
            if entry.coded:
                content = block_content(page, slot, db.pool.bases)
                if block_digest(dtype, rows, cols, content) != digest:
                    raise CorruptPageError(
                        f"block {block_id} on page {page_id} in {location.file} decodes to "
                        "other bytes than were stored; restore the database from a backup"
                    )
        checked += 1
        if progress:
            progress(location.length, total)
    return checked
