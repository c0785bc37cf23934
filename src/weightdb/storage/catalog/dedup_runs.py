"""Rows of approximate deduplication: the block map a planner starts from, and the one
transaction that commits a plan (replacements, reference counts, the run and its quality)."""

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable


class DedupRows:
    """Dedup methods of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def block_rows(self) -> list[tuple[int, bytes, str, int, int, int, int, int]]:
        """(block id, digest, dtype, rows, cols, nbytes, page id, slot) of every block."""
        return self.conn.execute(
            "SELECT block_id, digest, dtype, rows, cols, nbytes, page_id, slot FROM blocks"
        ).fetchall()

    def position_rows(self) -> list[tuple[str, int, str, int, int, int]]:
        """(model, tensor id, tensor, block row, block col, block id) of every position."""
        return self.conn.execute(
            "SELECT m.name, t.tensor_id, t.name, tb.block_row, tb.block_col, tb.block_id "
            "FROM tensor_blocks tb JOIN tensors t USING (tensor_id) JOIN models m USING (model_id)"
        ).fetchall()

    def tensor_owners(self) -> dict[int, int]:
        """Tensor id -> model id."""
        return dict(self.conn.execute("SELECT tensor_id, model_id FROM tensors"))

    def stored_block_bytes(self) -> int:
        """Bytes of every distinct block, decoded."""
        return self.conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()[0]

    def commit_dedup(
        self,
        method: str,
        parameters: dict,
        replacements: list[tuple],
        quality: Iterable[tuple[int, str, float, str]],
    ) -> tuple[int, int, set[int]]:
        """Inside a transaction: a dedup run. ``replacements`` are rows of (tensor id, block
        row, block col, old block, new block, old digest, nbytes, similarity); ``quality``
        (model id, metric, value, dataset) where dataset may hold ``{run}``. Moves the
        positions, fixes reference counts, records the run, reclaims what nothing uses and
        records the changed models' digests (checked first). Returns the run id, the stored
        block bytes after, and the retired page ids."""
        owners = self.tensor_owners()
        changed = {owners[r[0]] for r in replacements}
        refs = Counter()
        for r in replacements:
            refs[r[4]] += 1
            refs[r[3]] -= 1
        with self.rewriting(changed):
            run_id = self.conn.execute(
                "INSERT INTO dedup_runs(method, parameters, stored_bytes_before, "
                "stored_bytes_after) SELECT ?, ?, COALESCE(SUM(nbytes), 0), 0 FROM blocks",
                (method, json.dumps(parameters, sort_keys=True)),
            ).lastrowid
            self.conn.executemany(
                "UPDATE tensor_blocks SET block_id = ? "
                "WHERE tensor_id = ? AND block_row = ? AND block_col = ? AND block_id = ?",
                [(new, tensor, i, j, old) for tensor, i, j, old, new, *_ in replacements],
            )
            self.conn.executemany(
                "UPDATE blocks SET refs = refs + ? WHERE block_id = ?",
                [(delta, block_id) for block_id, delta in refs.items() if delta],
            )
            self.conn.executemany(
                "INSERT INTO block_replacements(run_id, tensor_id, block_row, block_col, "
                "old_digest, old_block_id, new_block_id, nbytes, similarity) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, tensor, i, j, digest, old, new, nbytes, similarity)
                    for tensor, i, j, old, new, digest, nbytes, similarity in replacements
                ],
            )
            self.conn.executemany(
                "INSERT INTO quality(model_id, metric, value, dataset) VALUES (?, ?, ?, ?)",
                [(m, metric, v, dataset.format(run=run_id)) for m, metric, v, dataset in quality],
            )
            retired = self.reclaim_unreferenced()
            stored_after = self.stored_block_bytes()
            self.conn.execute(
                "UPDATE dedup_runs SET stored_bytes_after = ? WHERE run_id = ?",
                (stored_after, run_id),
            )
            self.bump_layout_generation()
        return run_id, stored_after, retired
