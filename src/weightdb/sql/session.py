"""The DuckDB side of a database: ``features.duckdb`` in the database folder holds the user's
own tables (features, labels); weightdb's functions and catalog tables are added to it."""

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from weightdb.errors import WeightDBError
from weightdb.sql import catalog_tables, functions

if TYPE_CHECKING:
    from weightdb.database import Database

FEATURES = "features.duckdb"


class SQLError(WeightDBError):
    """A SQL statement failed: syntax, a missing table, or a weightdb function's complaint."""


class SQLSession:
    def __init__(self, db: "Database") -> None:
        self._db = db
        self._con = duckdb.connect(str(Path(db.path) / FEATURES))
        functions.register(self._con, db)
        self._lock = threading.Lock()

    def query(self, query: str, parameters: list | None = None) -> pa.Table:
        """Run one statement to completion and return its result as an Arrow table.

        Eager on purpose: errors (including a weightdb function's) surface here, inside the
        lock, and ``?`` parameters are bound by DuckDB, never formatted into the text.
        """
        with self._lock:
            catalog_tables.refresh(self._con, self._db)
            try:
                relation = self._con.sql(query, params=parameters)
                return pa.table({}) if relation is None else relation.to_arrow_table()
            except duckdb.Error as error:
                raise SQLError(_clean(error)) from None

    def load_table(self, name: str, table: pa.Table) -> None:
        """Store an Arrow table as DuckDB table ``name`` (replacing one of that name)."""
        with self._lock:
            self._con.register("_weightdb_load", table)
            try:
                self._con.execute(
                    f"CREATE OR REPLACE TABLE {quote_identifier(name)} AS "
                    "SELECT * FROM _weightdb_load"
                )
            except duckdb.Error as error:
                raise SQLError(_clean(error)) from None
            finally:
                self._con.unregister("_weightdb_load")

    def close(self) -> None:
        self._con.close()


def quote_identifier(name: str) -> str:
    """A SQL identifier for any string: double quotes around it, inner quotes doubled."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise SQLError(f"{name!r} cannot be a table name")
    return '"' + name.replace('"', '""') + '"'


def _clean(error: duckdb.Error) -> str:
    """DuckDB's message without the wrapper text around a Python function's exception."""
    return str(error).replace("Python exception occurred while executing the UDF: ", "")
