"""The relations of the catalog (DESIGN.md), and the check that a catalog file has them as
this build creates them."""

import functools
import sqlite3

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
-- Digests over the rows above that decide what a model reads: see catalog/digests.py.
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
    codec INTEGER NOT NULL,         -- a codecs number other than RAW (codecs.NAMES)
    base_block_id INTEGER REFERENCES blocks(block_id),  -- deltas (codecs.DELTAS) only
    stored_nbytes INTEGER NOT NULL  -- bytes on the page, against blocks.nbytes decoded
);
CREATE INDEX IF NOT EXISTS block_codings_by_base ON block_codings(base_block_id);
-- Which model a model descends from (storage/lineage.py): its blocks are coded against it.
CREATE TABLE IF NOT EXISTS lineage (
    model_id INTEGER PRIMARY KEY REFERENCES models(model_id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES models(model_id) ON DELETE SET NULL,
    found_by TEXT NOT NULL          -- given | shared blocks | xor sample
);
-- Read-only processes and the time their catalog snapshot was taken (catalog/leases.py): a
-- retired page stays on disk while a live lease's snapshot predates its retirement.
CREATE TABLE IF NOT EXISTS reader_leases (
    reader_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    snapshot_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


def table_shape(conn: sqlite3.Connection, table: str) -> tuple[list, list]:
    """Columns (name, type, constraints, key) and foreign keys of a table; ``table`` is one
    of SCHEMA's own names, never user text."""
    return (
        conn.execute(f"PRAGMA table_info({table})").fetchall(),
        conn.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
    )


@functools.cache
def expected_tables() -> dict[str, tuple[list, list]]:
    memory = sqlite3.connect(":memory:")
    try:
        memory.executescript(SCHEMA)
        tables = memory.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {table: table_shape(memory, table) for (table,) in tables}
    finally:
        memory.close()
