"""A full check of a database: the catalog file, every model's rows against their digests, and
every page read from disk and verified against the catalog, block by block.

Checksums cover the bytes as stored; a coded block (the lossless tier) is also decoded and its
digest compared with the catalog's, so a wrong base or a codec bug cannot pass unnoticed.
"""

from weightdb.errors import CatalogCorruptError, CorruptPageError
from weightdb.progress import Progress
from weightdb.storage.block_writer import block_digest
from weightdb.storage.catalog import RESTORE, damaged
from weightdb.storage.page_images import decode_page
from weightdb.storage.store import Store

SHOWN = 10
"""Damaged models and tensors named in one error; the count says how many more."""


def verify_database(store: Store, progress: Progress | None = None) -> int:
    """Check the catalog, then every page; raise on the first problem found, naming what is
    damaged (by model and tensor for catalog rows). Returns the pages checked."""
    problems = store.catalog.quick_check()
    if problems != ["ok"]:
        raise damaged(store.catalog.path, problems[0])
    damage = store.catalog.digest_damage()
    if damage:
        more = f" and {len(damage) - SHOWN} more" if len(damage) > SHOWN else ""
        raise CatalogCorruptError(
            f"catalog rows do not match their digests for {', '.join(map(str, damage[:SHOWN]))}"
            f"{more}: catalog.sqlite was changed outside weightdb or is damaged; "
            f"{RESTORE}"
        )
    return _verify_pages(store, progress)


def _verify_pages(store: Store, progress: Progress | None) -> int:
    """Check checksums, headers, that each block and each copy of a block sits where the
    catalog says, and that its bytes match the block's recorded SHA-256."""
    catalog = store.catalog
    checked = 0
    pages = catalog.live_pages()
    total = sum(length for _, length in pages)
    for page_id, _ in pages:
        location = store.locate_page(page_id)
        page = store.reader.read(location)
        image = decode_page(page, store.pool.bases)  # once: a stream decodes as a whole
        for block_id, slot, nbytes, digest, dtype, rows, cols in catalog.blocks_on_page(page_id):
            entry = page.entries[slot] if slot < len(page.entries) else None
            if entry is None or entry.block_id != block_id or entry.nbytes != nbytes:
                raise CorruptPageError(
                    f"page {page_id} in {location.file} does not hold block {block_id} at "
                    f"slot {slot} as the catalog records"
                )
            content = image.block_content(slot)
            if block_digest(dtype, rows, cols, content) != digest:
                if entry.coded:
                    raise CorruptPageError(
                        f"block {block_id} on page {page_id} in {location.file} decodes to "
                        "other bytes than were stored; restore the database from a backup"
                    )
                raise CatalogCorruptError(
                    f"block {block_id} on page {page_id} in {location.file} does not match its "
                    f"recorded SHA-256; it is read by {_readers(store, block_id)}: "
                    f"{RESTORE}"
                )
        checked += 1
        if progress:
            progress(location.length, total)
    return checked


def _readers(store: Store, block_id: int) -> str:
    rows = store.catalog.block_readers(block_id, SHOWN)
    return ", ".join(f"model {m!r} tensor {t!r}" for m, t in rows) or "no model"
