"""A full check of a database: every page read from disk and verified against the catalog."""

from typing import TYPE_CHECKING

from weightdb.errors import CorruptPageError

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
        for block_id, slot, nbytes in conn.execute(
            "SELECT block_id, slot, nbytes FROM blocks WHERE page_id = ? UNION "
            "SELECT block_id, c.slot, b.nbytes FROM block_copies c JOIN blocks b USING (block_id) "
            "WHERE c.page_id = ?",
            (page_id, page_id),
        ):
            entry = page.entries[slot] if slot < len(page.entries) else None
            if entry is None or entry.block_id != block_id or entry.nbytes != nbytes:
                raise CorruptPageError(
                    f"page {page_id} in {location.file} does not hold block {block_id} at "
                    f"slot {slot} as the catalog records"
                )
        checked += 1
        if progress:
            progress(location.length, total)
    return checked
