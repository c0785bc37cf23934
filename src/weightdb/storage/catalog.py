"""The catalog: SQLite (WAL) holding the relations of DESIGN.md. It is the single commit point.

Every statement binds user strings as parameters; none is ever formatted into SQL text.
"""

import functools
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from weightdb.errors import CatalogCorruptError, FormatVersionError, one_line
from weightdb.storage import catalog_digest

CATALOG_VERSION = 2
"""1: no digests; 2: every model has digests over its rows (migrated on open)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,           -- safetensors | hf-directory | npz | onnx | pytorch | arrays
    graph BLOB,                     -- ONNX ModelProto without its stored initializers
    source_digest TEXT NOT NULL,    -- sha256 over tensor names, dtypes, shapes, block digests
    status TEXT NOT NULL,           -- ready
    metadata TEXT NOT NULL,         -- JSON: source metadata needed to export faithfully
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS tensors (
    tensor_id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(model_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,      -- order in the source, kept for export
    name TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,            -- JSON list
    block_rows INTEGER NOT NULL,
    block_cols INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    UNIQUE (model_id, name)
);
CREATE TABLE IF NOT EXISTS tensor_blocks (
    tensor_id INTEGER NOT NULL REFERENCES tensors(tensor_id) ON DELETE CASCADE,
    block_row INTEGER NOT NULL,
    block_col INTEGER NOT NULL,
    block_id INTEGER NOT NULL REFERENCES blocks(block_id),
    PRIMARY KEY (tensor_id, block_row, block_col)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tensor_blocks_by_block ON tensor_blocks(block_id);
CREATE TABLE IF NOT EXISTS blocks (
    block_id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,           -- sha256 of dtype, shape and bytes
    dtype TEXT NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    page_id INTEGER NOT NULL REFERENCES pages(page_id),
    slot INTEGER NOT NULL,
    refs INTEGER NOT NULL           -- tensor_blocks rows that point here
);
CREATE INDEX IF NOT EXISTS blocks_by_digest ON blocks(digest);
CREATE INDEX IF NOT EXISTS blocks_by_page ON blocks(page_id);
CREATE TABLE IF NOT EXISTS pages (
    page_id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pages_by_file ON pages(file);
-- Where a model reads a block when that is not the block's own page (blocks.page_id, slot): a
-- repack may store a shared block on several pages so that each page holds only blocks all its
-- readers use. A row exists only while the model uses the block (reclaim drops the others).
CREATE TABLE IF NOT EXISTS block_copies (
    model_id INTEGER NOT NULL REFERENCES models(model_id) ON DELETE CASCADE,
    block_id INTEGER NOT NULL REFERENCES blocks(block_id) ON DELETE CASCADE,
    page_id INTEGER NOT NULL REFERENCES pages(page_id),
    slot INTEGER NOT NULL,
    PRIMARY KEY (model_id, block_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS block_copies_by_page ON block_copies(page_id);
CREATE INDEX IF NOT EXISTS block_copies_by_block ON block_copies(block_id);
-- The page and slot every block position of every model is read from: its copy, else the block.
CREATE VIEW IF NOT EXISTS block_reads AS
SELECT t.model_id, tb.tensor_id, tb.block_row, tb.block_col, tb.block_id,
    COALESCE(c.page_id, b.page_id) AS page_id, COALESCE(c.slot, b.slot) AS slot
FROM tensors t JOIN tensor_blocks tb USING (tensor_id) JOIN blocks b USING (block_id)
LEFT JOIN block_copies c ON c.model_id = t.model_id AND c.block_id = tb.block_id;
-- (page, model) for every block a model reads from that page, with repeats: filtered by page or
-- by model, each half of the union uses an index (block_reads cannot be searched by page).
CREATE VIEW IF NOT EXISTS page_readers AS
SELECT b.page_id, t.model_id
FROM blocks b JOIN tensor_blocks tb USING (block_id) JOIN tensors t USING (tensor_id)
WHERE NOT EXISTS (
    SELECT 1 FROM block_copies c WHERE c.model_id = t.model_id AND c.block_id = b.block_id
)
UNION ALL SELECT page_id, model_id FROM block_copies;
-- Pages a layout change or a reclaim took out of use. Readers that planned on them before the
-- change (in-flight requests, other processes) can still read them, and a writer deletes their
-- files once they have been retired for longer than the grace period.
CREATE TABLE IF NOT EXISTS retired_pages (
    page_id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    retired_at REAL NOT NULL
);
-- Digests over the rows above that decide what a model reads: see catalog_digest.py.
CREATE TABLE IF NOT EXISTS tensor_digests (
    tensor_id INTEGER PRIMARY KEY REFERENCES tensors(tensor_id) ON DELETE CASCADE,
    digest BLOB NOT NULL            -- sha256 of the tensor row and its block map
);
CREATE TABLE IF NOT EXISTS model_digests (
    model_id INTEGER PRIMARY KEY REFERENCES models(model_id) ON DELETE CASCADE,
    digest BLOB NOT NULL            -- sha256 of the model row and its tensor digests in order
);
CREATE TABLE IF NOT EXISTS quality (
    model_id INTEGER NOT NULL REFERENCES models(model_id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    dataset TEXT NOT NULL,
    measured_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS dedup_runs (
    run_id INTEGER PRIMARY KEY,
    method TEXT NOT NULL,           -- exact | netsdb | weightdb | mistique | pairwise
    parameters TEXT NOT NULL,       -- JSON: per-model budgets and the method's parameters
    stored_bytes_before INTEGER NOT NULL,
    stored_bytes_after INTEGER NOT NULL,
    finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS block_replacements (
    run_id INTEGER NOT NULL REFERENCES dedup_runs(run_id),
    tensor_id INTEGER NOT NULL REFERENCES tensors(tensor_id) ON DELETE CASCADE,
    block_row INTEGER NOT NULL,
    block_col INTEGER NOT NULL,
    old_digest BLOB NOT NULL,       -- what the position held before this run
    old_block_id INTEGER NOT NULL,
    new_block_id INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    similarity REAL                 -- the method's own score of old vs new block
);
CREATE INDEX IF NOT EXISTS block_replacements_by_tensor ON block_replacements(tensor_id);
-- The lossless tier: blocks stored coded (storage/codecs.py), a block without a row is raw. A
-- delta's base is never itself a delta, and lives (refs or not) while a delta refers to it.
CREATE TABLE IF NOT EXISTS block_codings (
    block_id INTEGER PRIMARY KEY REFERENCES blocks(block_id) ON DELETE CASCADE,
    codec INTEGER NOT NULL,         -- codecs.PLANES | codecs.XOR_PLANES
    base_block_id INTEGER REFERENCES blocks(block_id),  -- XOR_PLANES only
    stored_nbytes INTEGER NOT NULL  -- bytes on the page, against blocks.nbytes decoded
);
CREATE INDEX IF NOT EXISTS block_codings_by_base ON block_codings(base_block_id);
-- Which model a model descends from (storage/lineage.py): its blocks are coded against it.
CREATE TABLE IF NOT EXISTS lineage (
    model_id INTEGER PRIMARY KEY REFERENCES models(model_id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES models(model_id) ON DELETE SET NULL,
    found_by TEXT NOT NULL          -- given | shared blocks | xor sample
);
"""


class Catalog:
    """A connection to ``catalog.sqlite``. One per thread; writers also hold the writer lock."""

    def __init__(self, path: Path, create: bool) -> None:
        self.path = path
        self.conn = sqlite3.connect(
            path,
            timeout=60,
            isolation_level=None,
            check_same_thread=False,
            factory=_DamageReportingConnection,
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
        tables added since, and a version 1 catalog its digests (catalog_digest.py)."""
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
                    catalog_digest.record_missing(conn)
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'catalog_version'",
                        (str(CATALOG_VERSION),),
                    )

    def _check_tables(self) -> None:
        """Refuse a catalog whose tables are not the ones this build creates: a damaged
        schema would otherwise fail (or mislead) in whichever query first meets it."""
        for table, expected in _expected_tables().items():
            if _table_shape(self.conn, table) != expected:
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

    @staticmethod
    def bump_layout_generation(conn: sqlite3.Connection) -> None:
        """Inside a transaction that changes which bytes a tensor's blocks hold or where they
        live: tells every process's prepared-model cache to recompile."""
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('layout_generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def close(self) -> None:
        self.conn.close()


def _reporting_damage(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args):
        try:
            return method(self, *args)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
            # weightdb writes only valid text: a value that is not UTF-8 is damage too
            if isinstance(error, sqlite3.DatabaseError) and not is_damage(error):
                raise
            connection = self if isinstance(self, sqlite3.Connection) else self.connection
            raise damaged(connection.path, error) from None

    return call


class _DamageReportingCursor(sqlite3.Cursor):
    execute = _reporting_damage(sqlite3.Cursor.execute)
    executemany = _reporting_damage(sqlite3.Cursor.executemany)
    fetchone = _reporting_damage(sqlite3.Cursor.fetchone)
    fetchmany = _reporting_damage(sqlite3.Cursor.fetchmany)
    fetchall = _reporting_damage(sqlite3.Cursor.fetchall)
    __next__ = _reporting_damage(sqlite3.Cursor.__next__)


class _DamageReportingConnection(sqlite3.Connection):
    """A connection whose every query turns SQLite's report of a damaged file into one
    ``CatalogCorruptError`` saying what to do: damage surfaces in whichever query first
    reads the damaged page, not only when the catalog is opened."""

    path: Path

    def cursor(self, factory=_DamageReportingCursor):
        return super().cursor(factory)

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)


def _table_shape(conn: sqlite3.Connection, table: str) -> tuple[list, list]:
    """Columns (name, type, constraints, key) and foreign keys of a table; ``table`` is one
    of SCHEMA's own names, never user text."""
    return (
        conn.execute(f"PRAGMA table_info({table})").fetchall(),
        conn.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
    )


@functools.cache
def _expected_tables() -> dict[str, tuple[list, list]]:
    memory = sqlite3.connect(":memory:")
    try:
        memory.executescript(SCHEMA)
        tables = memory.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {table: _table_shape(memory, table) for (table,) in tables}
    finally:
        memory.close()


SCHEMA_DAMAGE = re.compile(
    r"no such (table|column)|foreign key mismatch|table \S+ has (no column named|\d+ columns)"
    r"|Could not decode to UTF-8"
)
"""Messages of SQLITE_ERROR (or of the sqlite3 module itself, which sets no error name)
that mean the stored schema or text is not what weightdb wrote."""


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file damaged (or not a database at all, or with a schema
    weightdb did not create), not merely busy."""
    name = getattr(error, "sqlite_errorname", None)
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return True
    return name in ("SQLITE_ERROR", None) and SCHEMA_DAMAGE.match(str(error)) is not None


def damaged(path: Path, problem: object) -> CatalogCorruptError:
    """The one-line error for a catalog file SQLite finds damaged (``problem`` says how)."""
    return CatalogCorruptError(
        f"{path} is damaged ({one_line(problem)}); restore it from a backup, then run "
        "`weightdb verify`"
    )
