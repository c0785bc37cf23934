"""Import: cut every tensor of a source into blocks, store new blocks, commit one transaction.

The model becomes visible only at the commit, with all its tensors; a crash before it leaves
page files that no catalog row refers to, and the next writer deletes them.

With the lossless tier on, the model's parent (given, or found by ``lineage``) is recorded and
each new block is coded against the parent's block at the same position where that saves.
"""

import errno
import hashlib
import json
from collections import Counter

from weightdb.errors import ModelExistsError, StorageFullError
from weightdb.ingest.source import ModelSource
from weightdb.progress import Progress
from weightdb.storage import lineage
from weightdb.storage.block_writer import BlockWriter
from weightdb.storage.blocking import as_matrix, layout_for, panel_runs
from weightdb.storage.catalog import CatalogError
from weightdb.storage.page_format import ROW_MAJOR
from weightdb.storage.panel_order import panel_axes
from weightdb.storage.store import Store


def _refuse_existing(store: Store, name: str) -> None:
    if store.catalog.has_model(name):
        raise ModelExistsError(
            f"a model named {name!r} already exists; choose another name or remove it first "
            f"(`weightdb rm {name}`)"
        )


def import_source(
    store: Store,
    source: ModelSource,
    name: str,
    progress: Progress | None,
    parent: str | None = None,
    lossless: bool = False,
) -> int:
    """Store ``source`` as model ``name``; with ``lossless``, code it against ``parent`` (found
    among the stored models when None). Returns the bytes of the blocks this import added
    (counted in its own write, as other writers may commit while it waits for the lock)."""
    catalog = store.catalog
    _refuse_existing(store, name)
    parent_id = None if parent is None else catalog.model_id(parent)
    with store.writer_lock:
        store.collect_garbage()
        found = (parent_id, "given") if parent_id is not None else None
        if lossless and found is None:
            found = lineage.find_parent(
                catalog,
                source,
                store.settings.block_shape,
                lambda block_id: store.pool.block_bytes(block_id, ROW_MAJOR),
            )
        bases = {}
        if lossless and found:
            bases = lineage.base_blocks(catalog, found[0], source.tensors)
        writer = BlockWriter(
            catalog,
            store.pool,
            store.pages_dir,
            store.settings.page_size,
            store.settings.segment_bytes,
            store.next_ids(),
            lossless,
        )
        try:
            tensor_rows, block_rows, digest = _write_blocks(store, source, writer, progress, bases)
            writer.finish()
        except BaseException as error:
            writer.abort()
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise StorageFullError(
                    f"the disk holding {store.pages_dir} is full; nothing of {name!r} was "
                    "imported: free space and retry"
                ) from error
            raise
        refs = Counter(row[3] for row in block_rows)
        try:
            with catalog.transaction():
                _refuse_existing(store, name)
                writer.insert_rows(refs)
                catalog.insert_model(
                    name,
                    (source.format, source.graph, digest, json.dumps(source.metadata)),
                    found,
                    tensor_rows,
                    block_rows,
                )
        except (ModelExistsError, CatalogError):
            store.collect_garbage()
            raise
    return sum(block.nbytes for block in writer.new_blocks)


def _write_blocks(
    store: Store, source: ModelSource, writer: BlockWriter, progress, bases: dict
) -> tuple[list, list, str]:
    """Store every block (coded against ``bases``, see ``lineage.base_blocks``); return tensor
    rows, (tensor index, i, j, block id) rows and a content digest of the whole model (names,
    dtypes, shapes and block digests, in order)."""
    tensor_rows, block_rows = [], []
    model_digest = hashlib.sha256()
    axes = panel_axes(source.graph)
    for position, entry in enumerate(source.tensors):
        layout = layout_for(entry.shape, store.settings.block_shape)
        array = entry.load()
        if array.shape != entry.shape or array.dtype != entry.dtype.numpy:
            raise AssertionError(f"reader returned {array.dtype}{array.shape} for {entry.name}")
        matrix = as_matrix(array)
        model_digest.update(json.dumps([entry.name, entry.dtype.name, entry.shape]).encode())
        digests = {}
        for run, order in panel_runs(layout, axes.get(entry.name)):
            writer.start_run(sum(layout.block_nbytes(i, j, entry.dtype.itemsize) for i, j in run))
            for i, j in run:
                r0, r1, c0, c1 = layout.bounds(i, j)
                block = matrix[r0:r1, c0:c1]
                base = bases.get((entry.name, i, j))
                block_id, digests[i, j] = writer.add(entry.dtype.name, block, order, base)
                block_rows.append((position, i, j, block_id))
                if progress:
                    progress((r1 - r0) * (c1 - c0) * entry.dtype.itemsize, source.nbytes)
        for position_ij in layout.positions():  # the digest follows row-major order
            model_digest.update(digests[position_ij])
        tensor_rows.append(
            (
                position,
                entry.name,
                entry.dtype.name,
                json.dumps(list(entry.shape)),
                layout.block_rows,
                layout.block_cols,
                entry.nbytes,
            )
        )
    return tensor_rows, block_rows, model_digest.hexdigest()
