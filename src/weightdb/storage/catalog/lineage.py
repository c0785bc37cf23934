"""Rows of lineage: which model a model descends from, and what its blocks are coded against."""

import sqlite3
from collections.abc import Iterable


class LineageRows:
    """Lineage methods of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def parent_name(self, model_id: int) -> str | None:
        row = self.conn.execute(
            "SELECT p.name FROM lineage l JOIN models p ON p.model_id = l.parent_id "
            "WHERE l.model_id = ?",
            (model_id,),
        ).fetchone()
        return row[0] if row else None

    def parents(self) -> dict[int, int | None]:
        """Model id -> parent id of every model with a lineage row."""
        return dict(self.conn.execute("SELECT model_id, parent_id FROM lineage"))

    def set_parents(self, found: Iterable[tuple[int, int | None, str]]) -> None:
        """Inside a transaction: (model id, parent id, how found) lineage rows."""
        self.conn.executemany(
            "INSERT INTO lineage(model_id, parent_id, found_by) VALUES (?, ?, ?)", list(found)
        )

    def tensor_signatures(self, before: int | None) -> list[tuple[int, str, str, str]]:
        """(model id, tensor name, dtype, shape) of models imported before ``before``."""
        return self.conn.execute(
            "SELECT model_id, name, dtype, shape FROM tensors WHERE model_id < ?",
            (before if before is not None else 2**62,),
        ).fetchall()

    def coding_bases(self, model_id: int) -> list[tuple[str, str, str, int, int, int]]:
        """(tensor, dtype, shape, block row, block col, block) for every position of a model,
        where block is the position's block, or its base if that block is a delta."""
        return self.conn.execute(
            "SELECT t.name, t.dtype, t.shape, tb.block_row, tb.block_col, "
            "COALESCE(c.base_block_id, tb.block_id) FROM tensors t JOIN tensor_blocks tb "
            "USING (tensor_id) LEFT JOIN block_codings c ON c.block_id = tb.block_id "
            "WHERE t.model_id = ?",
            (model_id,),
        ).fetchall()

    def position_digests(self, model_id: int) -> dict[tuple[str, int, int], bytes]:
        """(tensor, block row, block col) -> content digest of a model's blocks."""
        return {
            (name, i, j): digest
            for name, i, j, digest in self.conn.execute(
                "SELECT t.name, tb.block_row, tb.block_col, b.digest FROM tensors t "
                "JOIN tensor_blocks tb USING (tensor_id) JOIN blocks b USING (block_id) "
                "WHERE t.model_id = ?",
                (model_id,),
            )
        }

    def positions_by_model(self) -> dict[int, dict[tuple, int]]:
        """Model id -> (tensor, dtype, shape, block row, block col) -> block id, by model id."""
        positions: dict[int, dict[tuple, int]] = {}
        for model_id, *key, block_id in self.conn.execute(
            "SELECT t.model_id, t.name, t.dtype, t.shape, tb.block_row, tb.block_col, "
            "tb.block_id FROM tensors t JOIN tensor_blocks tb USING (tensor_id) "
            "ORDER BY t.model_id"
        ):
            positions.setdefault(model_id, {})[tuple(key)] = block_id
        return positions
