"""Bytes saved by each tier, from the catalog alone (for ``weightdb stats``).

Logical bytes are what every position of every model would store on its own. Without
approximate replacements each position would hold its original content: the distinct original
contents are what exact deduplication alone stores; the rest of the saving is approximate.
"""

import sqlite3


def savings_by_tier(conn: sqlite3.Connection) -> dict:
    original: dict[tuple, tuple[bytes, int]] = {}
    for tensor_id, row, col, digest, nbytes in conn.execute(
        "SELECT tensor_id, block_row, block_col, old_digest, nbytes FROM block_replacements "
        "ORDER BY rowid DESC"
    ):
        original[(tensor_id, row, col)] = (digest, nbytes)  # the earliest run wins
    logical = 0
    contents: dict[bytes, int] = {}
    for tensor_id, row, col, digest, nbytes in conn.execute(
        "SELECT tb.tensor_id, tb.block_row, tb.block_col, b.digest, b.nbytes "
        "FROM tensor_blocks tb JOIN blocks b USING (block_id)"
    ):
        digest, nbytes = original.get((tensor_id, row, col), (digest, nbytes))
        contents[digest] = nbytes
        logical += nbytes
    (stored,) = conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()
    exact_stored = sum(contents.values())
    return {
        "logical_bytes": logical,
        "stored_bytes": stored,
        "exact_saved_bytes": logical - exact_stored,
        "approximate_saved_bytes": exact_stored - stored,
        "replaced_positions": len(original),
    }
