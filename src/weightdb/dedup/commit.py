"""Committing a plan: one catalog transaction, so a crash leaves the old layout or the new.

The transaction repoints the replaced positions, fixes reference counts, records every
replacement and each evaluated model's quality before and after, deletes blocks nothing
points at any more (and pages left empty) and bumps the layout generation so prepared models
recompile. Page files are removed only after the commit, by the usual garbage collection.
"""

import json
from collections import Counter
from dataclasses import dataclass

from weightdb.database import Database
from weightdb.dedup.metrics import Measurement
from weightdb.dedup.plan import Replacement
from weightdb.dedup.workspace import Workspace
from weightdb.storage import catalog_digest
from weightdb.storage.catalog import SCHEMA, Catalog
from weightdb.storage.reclaim import reclaim_unreferenced


def ensure_tables(db: Database) -> None:
    """Create the dedup tables in a database made before they existed."""
    with db.catalog.transaction() as conn:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


@dataclass(frozen=True)
class Quality:
    metric: str
    measurements: dict[tuple[str, str], Measurement]  # (split, "before" | "after")


def commit_plan(
    db: Database,
    workspace: Workspace,
    replacements: list[Replacement],
    method: str,
    parameters: dict,
    quality: dict[str, Quality],
) -> tuple[int, int]:
    """Apply ``replacements`` atomically; return the run id and the stored bytes after."""
    model_ids = dict(db.catalog.conn.execute("SELECT name, model_id FROM models"))
    refs = Counter()
    for r in replacements:
        refs[r.new_block] += 1
        refs[r.old_block] -= 1
    owners = dict(db.catalog.conn.execute("SELECT tensor_id, model_id FROM tensors"))
    changed = {owners[r.position.tensor_id] for r in replacements}
    with db.catalog.transaction() as conn, catalog_digest.rewriting(conn, changed):
        run_id = conn.execute(
            "INSERT INTO dedup_runs(method, parameters, stored_bytes_before, stored_bytes_after) "
            "SELECT ?, ?, COALESCE(SUM(nbytes), 0), 0 FROM blocks",
            (method, json.dumps(parameters, sort_keys=True)),
        ).lastrowid
        conn.executemany(
            "UPDATE tensor_blocks SET block_id = ? "
            "WHERE tensor_id = ? AND block_row = ? AND block_col = ? AND block_id = ?",
            [
                (r.new_block, r.position.tensor_id, r.position.row, r.position.col, r.old_block)
                for r in replacements
            ],
        )
        conn.executemany(
            "UPDATE blocks SET refs = refs + ? WHERE block_id = ?",
            [(delta, block_id) for block_id, delta in refs.items() if delta],
        )
        conn.executemany(
            "INSERT INTO block_replacements(run_id, tensor_id, block_row, block_col, old_digest, "
            "old_block_id, new_block_id, nbytes, similarity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run_id,
                    r.position.tensor_id,
                    r.position.row,
                    r.position.col,
                    workspace.blocks[r.old_block].digest,
                    r.old_block,
                    r.new_block,
                    workspace.blocks[r.old_block].nbytes,
                    r.similarity,
                )
                for r in replacements
            ],
        )
        conn.executemany(
            "INSERT INTO quality(model_id, metric, value, dataset) VALUES (?, ?, ?, ?)",
            [
                (model_ids[model], q.metric, m.value, f"{split} {when} dedup run {run_id}")
                for model, q in quality.items()
                for (split, when), m in q.measurements.items()
            ],
        )
        retired = reclaim_unreferenced(conn)
        (stored_after,) = conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()
        conn.execute(
            "UPDATE dedup_runs SET stored_bytes_after = ? WHERE run_id = ?", (stored_after, run_id)
        )
        Catalog.bump_layout_generation(conn)
    db.pool.discard(retired)
    db.collect_garbage()
    return run_id, stored_after
