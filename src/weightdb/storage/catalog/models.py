"""Rows of models and their tensors: names, graphs, and the map from block positions to pages."""

import sqlite3
from dataclasses import dataclass

import numpy as np

from weightdb.errors import ModelNotFoundError
from weightdb.names import check_model_name

NO_GRAPH = (
    "it was imported without a graph: import its weights again with their ONNX graph "
    "(`weightdb import WEIGHTS --graph MODEL.onnx`)"
)
"""Why a model without a graph cannot predict, when its import recorded no better reason."""

GRAPH_CONSTANTS = (
    "COALESCE(json_extract(m.metadata, '$.graph_constants'), "
    "json_array_length(m.metadata, '$.initializer_order') - "
    "(SELECT COUNT(*) FROM tensors s WHERE s.model_id = m.model_id), 0)"
)
"""Initializers kept inside a model's graph (at most 256 bytes each), counted as tensors; for
ONNX models imported before ``graph_constants`` was recorded, all its initializers less the
stored ones."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    format: str
    tensors: int
    """Stored tensors plus the small initializers its graph keeps inside (see onnx_format)."""
    logical_bytes: int
    has_graph: bool
    source_digest: str
    created_at: str
    parent: str | None = None
    cannot_predict_because: str | None = None
    """None when the model has a graph the engine runs (checked at import)."""

    @property
    def can_predict(self) -> bool:
        return self.has_graph


@dataclass(frozen=True)
class TensorRow:
    tensor_id: int
    name: str
    dtype: str
    shape: str
    """JSON list."""
    block_rows: int
    block_cols: int


class ModelRows:
    """Model methods of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def model_id(self, name: str) -> int:
        row = self.conn.execute(
            "SELECT model_id FROM models WHERE name = ?", (check_model_name(name),)
        ).fetchone()
        if row is None:
            known = self.model_names()[:20]
            hint = f"; stored models: {', '.join(known)}" if known else "; the database is empty"
            raise ModelNotFoundError(f"no model named {name!r}{hint}")
        return row[0]

    def has_model(self, name: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is not None
        )

    def model_names(self) -> list[str]:
        """Every model's name, in the order they were imported."""
        return [n for (n,) in self.conn.execute("SELECT name FROM models ORDER BY model_id")]

    def model_ids(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT name, model_id FROM models"))

    def model_infos(self, model_id: int | None = None) -> list[ModelInfo]:
        """Every model (or the one with ``model_id``), by name."""
        where, parameters = ("WHERE m.model_id = ?", (model_id,)) if model_id else ("", ())
        rows = self.conn.execute(
            f"SELECT m.name, m.format, COUNT(t.tensor_id) + {GRAPH_CONSTANTS}, "
            "COALESCE(SUM(t.nbytes), 0), m.graph IS NOT NULL, m.source_digest, m.created_at, "
            "(SELECT p.name FROM lineage l JOIN models p ON p.model_id = l.parent_id "
            "WHERE l.model_id = m.model_id), json_extract(m.metadata, '$.no_graph_reason') "
            f"FROM models m LEFT JOIN tensors t USING (model_id) {where} "
            "GROUP BY m.model_id ORDER BY m.name",
            parameters,
        ).fetchall()
        return [
            ModelInfo(*row[:4], bool(row[4]), *row[5:8], None if row[4] else row[8] or NO_GRAPH)
            for row in rows
        ]

    def graph_and_metadata(self, model_id: int) -> tuple[bytes | None, str]:
        """The model's serialized graph without stored initializers (None for weights only)
        and its source metadata (JSON), once the model row is checked against its digest."""
        self.check_model(model_id)
        return self.conn.execute(
            "SELECT graph, metadata FROM models WHERE model_id = ?", (model_id,)
        ).fetchone()

    def tensor_rows(self, model_id: int) -> list[TensorRow]:
        """The model's tensors in source order."""
        return [
            TensorRow(*row)
            for row in self.conn.execute(
                "SELECT tensor_id, name, dtype, shape, block_rows, block_cols FROM tensors "
                "WHERE model_id = ? ORDER BY position",
                (model_id,),
            )
        ]

    def block_reads(self, model_id: int) -> dict[int, np.ndarray]:
        """Tensor id -> (block row, block col, page id, slot) of each block the model reads, an
        (n, 4) array, from rows checked against their digests (``checked_block_rows``)."""
        rows = self.checked_block_rows(model_id)
        if not rows:
            return {}
        table = np.array([(r[0], r[1], r[2], r[-2], r[-1]) for r in rows], np.int64)
        starts = np.flatnonzero(np.diff(table[:, 0], prepend=-1))  # rows come by tensor
        return {
            int(table[a, 0]): table[a:b, 1:]
            for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(table)], strict=True)
        }

    def insert_model(
        self,
        name: str,
        source: tuple[str, bytes | None, str, str],
        parent: tuple[int, str] | None,
        tensors: list[tuple],
        blocks: list[tuple[int, int, int, int]],
    ) -> int:
        """Inside a transaction: a new model's rows, its digests included. ``source`` is
        (format, graph, source digest, metadata JSON), ``parent`` (parent id, how found),
        ``tensors`` rows of (position, name, dtype, shape, block rows, block cols, nbytes) and
        ``blocks`` rows of (index into ``tensors``, block row, block col, block id). Returns
        the model id."""
        model_id = self.conn.execute(
            "INSERT INTO models(name, format, graph, source_digest, status, metadata) "
            "VALUES (?, ?, ?, ?, 'ready', ?)",
            (name, *source),
        ).lastrowid
        if parent is not None:
            self.conn.execute(
                "INSERT INTO lineage(model_id, parent_id, found_by) VALUES (?, ?, ?)",
                (model_id, *parent),
            )
        tensor_ids = [
            self.conn.execute(
                "INSERT INTO tensors(model_id, position, name, dtype, shape, block_rows, "
                "block_cols, nbytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model_id, *row),
            ).lastrowid
            for row in tensors
        ]
        self.conn.executemany(
            "INSERT INTO tensor_blocks(tensor_id, block_row, block_col, block_id) "
            "VALUES (?, ?, ?, ?)",
            [(tensor_ids[t], i, j, b) for t, i, j, b in blocks],
        )
        self.record_digests([model_id])
        return model_id

    def delete_model(self, model_id: int) -> None:
        """Inside a transaction: drop the model's rows and its references to blocks (then call
        ``reclaim_unreferenced``)."""
        self.conn.execute(
            "UPDATE blocks SET refs = refs - counts.n FROM ("
            "  SELECT tb.block_id, COUNT(*) AS n FROM tensor_blocks tb"
            "  JOIN tensors t USING (tensor_id) WHERE t.model_id = ? GROUP BY tb.block_id"
            ") AS counts WHERE blocks.block_id = counts.block_id",
            (model_id,),
        )
        self.conn.execute(
            "DELETE FROM tensor_blocks WHERE tensor_id IN "
            "(SELECT tensor_id FROM tensors WHERE model_id = ?)",
            (model_id,),
        )
        self.conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,))

    def counts(self) -> dict[str, int]:
        """Rows and bytes for ``weightdb stats``."""
        conn = self.conn
        models, graph_constants = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM({GRAPH_CONSTANTS}), 0) FROM models m"
        ).fetchone()
        tensors, logical = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM tensors"
        ).fetchone()
        blocks, refs = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(refs), 0) FROM blocks"
        ).fetchone()
        return {
            "models": models,
            "tensors": tensors + graph_constants,
            "logical_bytes": logical,
            "distinct_blocks": blocks,
            "block_references": refs,
        }
