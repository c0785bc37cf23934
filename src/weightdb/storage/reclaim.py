"""Freeing space: dropping a model, then the blocks, pages and files nothing refers to.

Rows go in one transaction; files are deleted only after it commits. A crash in between
leaves unreferenced files, which the next writer's garbage collection removes.
"""

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


def reclaim_unreferenced(conn) -> set[int]:
    """Inside a transaction: delete blocks with no references and pages with no blocks.

    Returns the retired page ids (a partly used page stays until a repack rewrites it).
    """
    conn.execute("DELETE FROM blocks WHERE refs <= 0")
    retired = {
        page_id
        for (page_id,) in conn.execute(
            "SELECT page_id FROM pages WHERE page_id NOT IN (SELECT DISTINCT page_id FROM blocks)"
        )
    }
    conn.executemany("DELETE FROM pages WHERE page_id = ?", [(p,) for p in retired])
    return retired
