"""The catalog's rows as flat tables, for the ``weightdb`` schema the SQL session shows."""

import sqlite3

QUERIES = {
    "models": (
        "SELECT m.name, m.format, COUNT(t.tensor_id) AS tensors, "
        "COALESCE(SUM(t.nbytes), 0) AS bytes, m.graph IS NOT NULL AS has_graph, m.created_at "
        "FROM models m LEFT JOIN tensors t USING (model_id) GROUP BY m.model_id ORDER BY m.name"
    ),
    "tensors": (
        "SELECT m.name AS model, t.name, t.dtype, t.shape, t.nbytes AS bytes, "
        "t.block_rows, t.block_cols FROM tensors t JOIN models m USING (model_id) "
        "ORDER BY m.name, t.position"
    ),
    "pages": (
        "SELECT p.page_id, p.file, p.offset, p.length, "
        "(SELECT COUNT(*) FROM (SELECT block_id FROM blocks WHERE page_id = p.page_id UNION "
        "SELECT block_id FROM block_copies WHERE page_id = p.page_id)) AS blocks, "
        "(SELECT COUNT(DISTINCT model_id) FROM page_readers r WHERE r.page_id = p.page_id) "
        "AS models FROM pages p ORDER BY p.page_id"
    ),
}


class ViewRows:
    """Flat tables of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def view(self, name: str) -> tuple[list[str], list[tuple]]:
        """Column names and rows of one of ``QUERIES``."""
        cursor = self.conn.execute(QUERIES[name])
        return [d[0] for d in cursor.description], cursor.fetchall()
