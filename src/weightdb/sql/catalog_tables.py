"""The catalog and the buffer pool as tables in DuckDB's ``weightdb`` schema.

Refreshed before each statement, so ``SELECT * FROM weightdb.cache`` shows the counters as of
that query. Values are copied out of the catalog's own queries (``storage/catalog/views.py``).
"""

from typing import TYPE_CHECKING

import pyarrow as pa

from weightdb.storage.catalog.views import QUERIES

if TYPE_CHECKING:
    from weightdb.database import Database


BOOLEAN = {"has_graph"}
"""Columns SQLite returns as 0/1 that the SQL tables show as booleans."""


def refresh(con, db: "Database") -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS weightdb")
    tables = {}
    for name in QUERIES:
        columns, rows = db.store.catalog.view(name)
        tables[name] = pa.table(
            {
                c: [bool(row[k]) for row in rows] if c in BOOLEAN else [row[k] for row in rows]
                for k, c in enumerate(columns)
            }
        )
    stats = db.pool.stats()
    tables["cache"] = pa.table(
        {k: [v] for k, v in {**vars(stats), "hit_ratio": stats.hit_ratio}.items()}
    )
    for name, table in tables.items():
        con.register(f"_weightdb_{name}", table)
        con.execute(f"CREATE OR REPLACE VIEW weightdb.{name} AS SELECT * FROM _weightdb_{name}")
