"""The catalog and the buffer pool as tables in DuckDB's ``weightdb`` schema.

Refreshed before each statement, so ``SELECT * FROM weightdb.cache`` shows the counters as of
that query. Values are copied out of SQLite with bound parameters only.
"""

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from weightdb.database import Database

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


def refresh(con, db: "Database") -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS weightdb")
    tables = {}
    for name, query in QUERIES.items():
        cursor = db.catalog.conn.execute(query)
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        tables[name] = pa.table({c: [row[k] for row in rows] for k, c in enumerate(columns)})
    stats = db.pool.stats()
    tables["cache"] = pa.table(
        {k: [v] for k, v in {**vars(stats), "hit_ratio": stats.hit_ratio}.items()}
    )
    for name, table in tables.items():
        con.register(f"_weightdb_{name}", table)
        con.execute(f"CREATE OR REPLACE VIEW weightdb.{name} AS SELECT * FROM _weightdb_{name}")
