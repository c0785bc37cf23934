"""Lineage: which stored model a model descends from, and the base block of each position.

A model's parent is given (``--parent``) or found at import among the stored models whose
tensors of the same names, dtypes and shapes hold most of its bytes (fine-tunes for other tasks
differ in their heads only): the one sharing the most exact blocks on a sample of positions,
else the one whose XOR against the sample codes smallest (fine-tunes of a pretrained model
that is not stored are each other's best parents). The lossless tier codes each new block of
such a tensor as a delta against the parent's block at the same position; where that block is
itself a delta, against its base instead, so a delta's base is never a delta.
"""

import json
from collections.abc import Callable

import numpy as np

from weightdb.storage import codecs
from weightdb.storage.block_writer import block_digest
from weightdb.storage.blocking import as_matrix, layout_for
from weightdb.storage.catalog import Catalog

SAMPLE_BLOCKS = 24
"""Positions sampled to choose a parent: enough to tell siblings from strangers."""

Signature = dict[str, tuple[str, str]]
"""Tensor name -> (dtype, shape as the catalog's JSON)."""


def signature_of(tensors) -> Signature:
    return {t.name: (t.dtype.name, json.dumps(list(t.shape))) for t in tensors}


def candidates(catalog: Catalog, tensors, before: int | None) -> list[int]:
    """Stored models whose tensors matching ``tensors`` in name, dtype and shape hold more than
    half of their bytes, newest first (only models imported before ``before`` if given)."""
    signature = signature_of(tensors)
    nbytes = {t.name: t.nbytes for t in tensors}
    matched: dict[int, int] = {}
    for model_id, name, dtype, shape in catalog.tensor_signatures(before):
        if signature.get(name) == (dtype, shape):
            matched[model_id] = matched.get(model_id, 0) + nbytes[name]
    total = sum(nbytes.values())
    return sorted((m for m, n in matched.items() if 2 * n > total), reverse=True)


def base_blocks(catalog: Catalog, parent_id: int, tensors) -> dict[tuple[str, int, int], int]:
    """(tensor name, block row, block col) -> the block a child's block there is coded against:
    the parent's block, or that block's own base if it is a delta; only for the parent's
    tensors that match ``tensors`` in name, dtype and shape."""
    signature = signature_of(tensors)
    rows = catalog.coding_bases(parent_id)
    return {
        (name, i, j): block
        for name, dtype, shape, i, j, block in rows
        if signature.get(name) == (dtype, shape)
    }


def find_parent(
    catalog: Catalog,
    source,
    block_shape: tuple[int, int],
    row_major_bytes: Callable[[int], np.ndarray],
    before: int | None = None,
) -> tuple[int, str] | None:
    """The parent to code ``source`` against and how it was found, or None (``before``: see
    ``candidates``)."""
    models = candidates(catalog, source.tensors, before)
    if not models:
        return None
    sample = _sample(source, block_shape)
    digests = {model: catalog.position_digests(model) for model in models}
    shared = {
        model: sum(digests[model].get(key) == digest for key, digest, _, _ in sample)
        for model in models
    }
    best = max(models, key=lambda model: shared[model])
    if shared[best]:
        return best, "shared blocks"

    def coded_bytes(model: int) -> int:
        bases = base_blocks(catalog, model, source.tensors)
        return sum(
            len(codecs.encode(data, itemsize, row_major_bytes(bases[key])))
            if key in bases
            else len(data)
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
