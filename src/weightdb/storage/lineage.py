"""Lineage: which stored model a model descends from, and the base block of each position.

A model's parent is given (``--parent``) or found at import among the stored models with the
same tensor names, dtypes and shapes: the one sharing the most exact blocks on a sample of
positions, else the one whose XOR against the sample codes smallest (fine-tunes of a pretrained
model that is not stored are each other's best parents). The lossless tier codes each new block
as a delta against the parent's block at the same position; where that block is itself a delta,
against its base instead, so a delta's base is never a delta.
"""

import json
import sqlite3
from collections.abc import Callable

import numpy as np

from weightdb.storage import codecs
from weightdb.storage.block_writer import block_digest
from weightdb.storage.blocking import as_matrix, layout_for

SAMPLE_BLOCKS = 24
"""Positions sampled to choose a parent: enough to tell siblings from strangers."""

Signature = list[tuple[str, str, list[int]]]
"""(name, dtype, shape) of every tensor, in source order."""


def signature_of(tensors) -> Signature:
    return [(t.name, t.dtype.name, list(t.shape)) for t in tensors]


def candidates(conn: sqlite3.Connection, signature: Signature, before: int | None) -> list[int]:
    """Stored models with exactly these tensor names, dtypes and shapes, newest first (only
    those imported before model ``before`` if given)."""
    by_model: dict[int, Signature] = {}
    for model_id, name, dtype, shape in conn.execute(
        "SELECT model_id, name, dtype, shape FROM tensors WHERE model_id < ? "
        "ORDER BY model_id, position",
        (before if before is not None else 2**62,),
    ):
        by_model.setdefault(model_id, []).append((name, dtype, json.loads(shape)))
    return sorted((m for m, sig in by_model.items() if sig == signature), reverse=True)


def base_blocks(conn: sqlite3.Connection, parent_id: int) -> dict[tuple[str, int, int], int]:
    """(tensor name, block row, block col) -> the block a child's block there is coded against:
    the parent's block, or that block's own base if it is a delta."""
    rows = conn.execute(
        "SELECT t.name, tb.block_row, tb.block_col, COALESCE(c.base_block_id, tb.block_id) "
        "FROM tensors t JOIN tensor_blocks tb USING (tensor_id) "
        "LEFT JOIN block_codings c ON c.block_id = tb.block_id WHERE t.model_id = ?",
        (parent_id,),
    )
    return {(name, i, j): block for name, i, j, block in rows}


def find_parent(
    conn: sqlite3.Connection,
    source,
    block_shape: tuple[int, int],
    row_major_bytes: Callable[[int], np.ndarray],
    before: int | None = None,
) -> tuple[int, str] | None:
    """The parent to code ``source`` against and how it was found, or None (``before``: see
    ``candidates``)."""
    models = candidates(conn, signature_of(source.tensors), before)
    if not models:
        return None
    sample = _sample(source, block_shape)
    digests = {
        model: {
            (name, i, j): digest
            for name, i, j, digest in conn.execute(
                "SELECT t.name, tb.block_row, tb.block_col, b.digest FROM tensors t "
                "JOIN tensor_blocks tb USING (tensor_id) JOIN blocks b USING (block_id) "
                "WHERE t.model_id = ?",
                (model,),
            )
        }
        for model in models
    }
    shared = {
        model: sum(digests[model].get(key) == digest for key, digest, _, _ in sample)
        for model in models
    }
    best = max(models, key=lambda model: shared[model])
    if shared[best]:
        return best, "shared blocks"

    def coded_bytes(model: int) -> int:
        bases = base_blocks(conn, model)
        return sum(
            len(codecs.encode(data, itemsize, row_major_bytes(bases[key])))
            for key, _, data, itemsize in sample
        )

    return min(models, key=coded_bytes), "xor sample"


def _sample(source, block_shape: tuple[int, int]) -> list[tuple[tuple, bytes, np.ndarray, int]]:
    """Up to SAMPLE_BLOCKS positions spread over the largest tensors: (key, digest, row-major
    bytes as flat uint8, itemsize)."""
    tensors = sorted(source.tensors, key=lambda t: t.nbytes, reverse=True)[:SAMPLE_BLOCKS]
    per_tensor = max(1, SAMPLE_BLOCKS // len(tensors))
    sample = []
    for entry in tensors:
        layout = layout_for(entry.shape, block_shape)
        matrix = as_matrix(entry.load())
        positions = list(layout.positions())
        for i, j in positions[:: max(1, len(positions) // per_tensor)][:per_tensor]:
            r0, r1, c0, c1 = layout.bounds(i, j)
            block = np.ascontiguousarray(matrix[r0:r1, c0:c1])
            data = block.view(np.uint8).reshape(-1)
            digest = block_digest(entry.dtype.name, r1 - r0, c1 - c0, data)
            sample.append(((entry.name, i, j), digest, data, entry.dtype.itemsize))
    return sample
