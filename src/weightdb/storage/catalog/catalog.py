"""The catalog: SQLite (WAL) holding the relations of DESIGN.md. It is the single commit point.

Every statement binds user strings as parameters; none is ever formatted into SQL text.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from weightdb.errors import FormatVersionError
from weightdb.storage.catalog.blocks import BlockRows
from weightdb.storage.catalog.connection import DamageReportingConnection, damaged
from weightdb.storage.catalog.dedup_runs import DedupRows
from weightdb.storage.catalog.digests import DigestRows
from weightdb.storage.catalog.leases import LeaseRows
from weightdb.storage.catalog.lineage import LineageRows
from weightdb.storage.catalog.models import ModelRows
from weightdb.storage.catalog.pages import PageRows
from weightdb.storage.catalog.savings import SavingsRows
from weightdb.storage.catalog.schema import SCHEMA, expected_tables, table_shape
from weightdb.storage.catalog.views import ViewRows

CATALOG_VERSION = 2
"""1: no digests; 2: every model has digests over its rows (migrated on open)."""


class Catalog(
    ModelRows,
    PageRows,
    BlockRows,
    LineageRows,
    DigestRows,
    SavingsRows,
    ViewRows,
    DedupRows,
    LeaseRows,
):
    """A connection to ``catalog.sqlite`` and the named queries every other module uses (one
    mixin per group of relations). Writers also hold the writer lock."""

    def __init__(self, path: Path, create: bool) -> None:
        self.path = path
        self.conn = sqlite3.connect(
            path,
            timeout=60,
            isolation_level=None,
            check_same_thread=False,
            factory=DamageReportingConnection,
        )
        self.conn.path = path
        try:
            self._open(create)
        except BaseException:
            self.conn.close()
            raise

    def _open(self, create: bool) -> None:
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        if create:
            with self.transaction():
                self.conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self.conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('catalog_version', ?)",
                    (str(CATALOG_VERSION),),
                )
        version = self._check_version()
        self._ensure_schema(version)
        self._check_tables()

    def _ensure_schema(self, version: int) -> None:
        """Create whatever relation is missing: a database made by an earlier build gains the
        tables added since, and a version 1 catalog its digests (digests.py)."""
        missing = [
            statement
            for statement in SCHEMA.split(";")
            if statement.strip() and not self._exists(statement)
        ]
        if missing or version < CATALOG_VERSION:
            with self.transaction() as conn:
                for statement in missing:
                    conn.execute(statement)
                if version < CATALOG_VERSION:
                    self.record_missing_digests()
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'catalog_version'",
                        (str(CATALOG_VERSION),),
                    )

    def _check_tables(self) -> None:
        """Refuse a catalog whose tables are not the ones this build creates: a damaged
        schema would otherwise fail (or mislead) in whichever query first meets it."""
        for table, expected in expected_tables().items():
            if table_shape(self.conn, table) != expected:
                raise damaged(self.path, f"table {table} is not as weightdb created it")

    def _exists(self, statement: str) -> bool:
        name = statement.split("EXISTS", 1)[1].split()[0]
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return row is not None

    def _check_version(self) -> int:
        try:
            row = self.conn.execute(
                "SELECT value FROM meta WHERE key = 'catalog_version'"
            ).fetchone()
        except sqlite3.OperationalError:
            row = None
        version = int(row[0]) if row else 0
        if version > CATALOG_VERSION:
            raise FormatVersionError(
                f"{self.path} has catalog format {version}, newer than this weightdb reads "
                f"({CATALOG_VERSION}); upgrade weightdb to open it"
            )
        if version < 1:
            raise FormatVersionError(f"{self.path} is not a weightdb catalog (no version)")
        return version

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic catalog change: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def bump_layout_generation(self) -> None:
        """Inside a transaction that changes which bytes a tensor's blocks hold or where they
        live: tells every process's prepared-model cache to recompile."""
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('layout_generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def layout_generation(self) -> int:
        """A number that changes whenever a commit moves blocks to other pages."""
        return int(self.get_meta("layout_generation", "0"))

    def change_token(self) -> tuple[int, int]:
        """Equal to an earlier token only if no row changed since: SQLite's data_version
        counts other connections' commits, ``total_changes`` this connection's writes. One
        pragma, so per-request caches can check it cheaply."""
        (version,) = self.conn.execute("PRAGMA data_version").fetchone()
        return version, self.conn.total_changes

    def answers(self) -> None:
        """Raise ``CatalogError`` unless the catalog answers a query (for readiness checks)."""
        self.conn.execute("SELECT 1 FROM models LIMIT 1").fetchall()

    def quick_check(self) -> list[str]:
        """SQLite's own check of the file: ``["ok"]`` or the problems found."""
        return [row for (row,) in self.conn.execute("PRAGMA quick_check").fetchall()]

    def close(self) -> None:
        self.conn.close()
