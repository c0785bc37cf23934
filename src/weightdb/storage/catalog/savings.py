"""Bytes saved by each tier, from the catalog alone (for ``weightdb stats``).

Logical bytes are what every position of every model would store on its own. Without
approximate replacements each position would hold its original content: the distinct original
contents are what exact deduplication alone stores; the rest of the saving is approximate.
The lossless tier saves what its coded blocks take less than their raw bytes; stored bytes are
after all three.
"""

import sqlite3


class SavingsRows:
    """The savings report of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def savings_by_tier(self) -> dict:
        original: dict[tuple, tuple[bytes, int]] = {}
        for tensor_id, row, col, digest, nbytes in self.conn.execute(
            "SELECT tensor_id, block_row, block_col, old_digest, nbytes FROM block_replacements "
            "ORDER BY rowid DESC"
        ):
            original[(tensor_id, row, col)] = (digest, nbytes)  # the earliest run wins
        logical = 0
        contents: dict[bytes, int] = {}
        for tensor_id, row, col, digest, nbytes in self.conn.execute(
            "SELECT tb.tensor_id, tb.block_row, tb.block_col, b.digest, b.nbytes "
            "FROM tensor_blocks tb JOIN blocks b USING (block_id)"
        ):
            digest, nbytes = original.get((tensor_id, row, col), (digest, nbytes))
            contents[digest] = nbytes
            logical += nbytes
        (distinct,) = self.conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()
        (lossless,) = self.conn.execute(
            "SELECT COALESCE(SUM(b.nbytes - c.stored_nbytes), 0) FROM block_codings c "
            "JOIN blocks b USING (block_id)"
        ).fetchone()
        exact_stored = sum(contents.values())
        return {
            "logical_bytes": logical,
            "stored_bytes": distinct - lossless,
            "exact_saved_bytes": logical - exact_stored,
            "lossless_saved_bytes": lossless,
            "approximate_saved_bytes": exact_stored - distinct,
            "replaced_positions": len(original),
        }
