"""Freeing space: dropping a model, then the blocks, copies, pages and files nothing refers to.

Rows go in one transaction. Pages leave use by being retired, not deleted: whoever planned a
read on them before the commit can still make it, and their files are deleted by a later
writer once the grace period has passed (``Database.collect_garbage``).

A page is in use while a block lives on it or a model reads a copy of a block from it
(``block_copies``). A copy row is valid only while its model uses the block: every write that
takes blocks away from models (removing a model, committing a dedup plan) ends with
``reclaim_unreferenced``, which drops the copies that no longer hold, so no write but a repack
needs to know about copies.
"""

import sqlite3
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weightdb.database import Database


def remove_model(db: "Database", name: str) -> None:
    with db.writer_lock:
        model_id = db.model_id(name)
        with db.catalog.transaction() as conn:
            conn.execute(
                "UPDATE blocks SET refs = refs - counts.n FROM ("
                "  SELECT tb.block_id, COUNT(*) AS n FROM tensor_blocks tb"
                "  JOIN tensors t USING (tensor_id) WHERE t.model_id = ? GROUP BY tb.block_id"
                ") AS counts WHERE blocks.block_id = counts.block_id",
                (model_id,),
            )
            conn.execute(
                "DELETE FROM tensor_blocks WHERE tensor_id IN "
                "(SELECT tensor_id FROM tensors WHERE model_id = ?)",
                (model_id,),
            )
            conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
            retired = reclaim_unreferenced(conn)
        db.pool.discard(retired)
        db.collect_garbage()


def reclaim_unreferenced(conn: sqlite3.Connection) -> set[int]:
    """Inside a transaction: delete blocks with no references and copies their model no
    longer uses, and retire pages that neither a block nor a copy is on.

    Returns the retired page ids (a partly used page stays until a repack rewrites it).
    """
    conn.execute(
        "DELETE FROM block_copies WHERE NOT EXISTS (SELECT 1 FROM tensor_blocks tb "
        "JOIN tensors t USING (tensor_id) WHERE tb.block_id = block_copies.block_id "
        "AND t.model_id = block_copies.model_id)"
    )
    # A delta's base outlives its references while the delta lives (``block_codings``); the
    # second pass frees the bases whose last deltas the first one deleted (one level only).
    for _ in range(2):
        conn.execute(
            "DELETE FROM blocks WHERE refs <= 0 AND NOT EXISTS "
            "(SELECT 1 FROM block_codings c WHERE c.base_block_id = blocks.block_id)"
        )
    empty = {
        page_id
        for (page_id,) in conn.execute(
            "SELECT page_id FROM pages WHERE page_id NOT IN (SELECT page_id FROM blocks) "
            "AND page_id NOT IN (SELECT page_id FROM block_copies)"
        )
    }
    retire_pages(conn, empty)
    return empty


def retire_pages(conn: sqlite3.Connection, page_ids: set[int]) -> None:
    """Inside a transaction: move pages out of use, keeping them readable for a grace period."""
    conn.executemany(
        "INSERT INTO retired_pages(page_id, file, offset, length, checksum, retired_at) "
        "SELECT page_id, file, offset, length, checksum, ? FROM pages WHERE page_id = ?",
        [(time.time(), page_id) for page_id in page_ids],
    )
    conn.executemany("DELETE FROM pages WHERE page_id = ?", [(p,) for p in page_ids])
