"""``weightdb compress``: code (or decode) every stored block of an existing database, atomically.

Models without a parent get one (``lineage.find_parent``, among earlier models only, so lineage
never cycles). Blocks are decided in model order: a block's base is the parent's block at the
first position that uses it, resolved to that block's own base if it became a delta, so a
delta's base is never a delta. Every live page is rewritten, block for block in the same order,
into a new page whose image equals the old page's, so panels and copies keep their layout; one
catalog transaction then points blocks and copies at the new pages, replaces the codings and
retires the old pages. A crash before the commit leaves the previous state (orphaned page
files are removed by the next writer), after it the new one; exports stay bit-identical.
"""

import time
from dataclasses import dataclass

import numpy as np

from weightdb.progress import Progress
from weightdb.storage import codecs, lineage
from weightdb.storage.page_files import SegmentWriter
from weightdb.storage.page_format import ROW_MAJOR, PageBuilder
from weightdb.storage.store import Store


@dataclass
class CompressReport:
    pages_before: int
    pages_after: int
    page_bytes_before: int
    page_bytes_after: int
    coded_blocks: int
    delta_blocks: int
    parents_found: dict[str, str]
    """Model -> its new parent, for models that had none."""
    seconds: float


@dataclass(frozen=True)
class _Source:
    """A stored model as ``lineage.find_parent`` reads a source."""

    tensors: list


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    load: object
    nbytes: int


def compress(
    store: Store, lossless: bool = True, progress: Progress | None = None
) -> CompressReport:
    """Rewrite every page with blocks coded (``lossless``) or all raw (see module docstring)."""
    start = time.perf_counter()
    catalog = store.catalog
    with store.writer_lock:
        store.collect_garbage()
        catalog.refuse_damaged()
        found = _find_parents(store) if lossless else {}
        bases = _choose_bases(store, found) if lossless else {}
        pages = catalog.live_pages()
        moved, codings, new_pages = _rewrite(store, pages, bases, lossless, progress)
        names = {model_id: name for name, model_id in catalog.model_ids().items()}
        with catalog.transaction():  # digests checked above, recorded anew in move_slots
            catalog.set_parents((child, parent, how) for child, (parent, how) in found.items())
            catalog.move_slots(new_pages, moved, codings, {p for p, _ in pages})
        store.pool.discard({p for p, _ in pages})
    return CompressReport(
        pages_before=len(pages),
        pages_after=len(new_pages),
        page_bytes_before=sum(length for _, length in pages),
        page_bytes_after=sum(p.length for p in new_pages),
        coded_blocks=len(codings),
        delta_blocks=sum(1 for c in codings if c[2] is not None),
        parents_found={names[c]: names[p] for c, (p, _) in found.items()},
        seconds=time.perf_counter() - start,
    )


def _find_parents(store: Store) -> dict[int, tuple[int, str]]:
    """Model id -> (parent id, how found) for models without a parent that have one among the
    models imported before them."""
    known = store.catalog.parents()
    found = {}
    for model_id, name, _ in store.catalog.models_in_order():
        if model_id in known:
            continue
        tensors = [
            _Tensor(t.name, t.dtype, t.shape, t.read, t.nbytes)
            for t in store.tensors(name).values()
        ]
        parent = lineage.find_parent(
            store.catalog,
            _Source(tensors),
            store.settings.block_shape,
            lambda block_id: store.pool.block_bytes(block_id, ROW_MAJOR),
            before=model_id,
        )
        if parent is not None:
            found[model_id] = parent
    return found


def _choose_bases(store: Store, found: dict[int, tuple[int, str]]) -> dict[int, int]:
    """Block -> the block to try coding it against, deciding blocks in model order."""
    parents = store.catalog.parents()
    parents.update({child: parent for child, (parent, _) in found.items()})
    positions = store.catalog.positions_by_model()
    bases: dict[int, int] = {}
    decided: set[int] = set()
    for model_id, blocks in positions.items():
        parent = positions.get(parents.get(model_id), {})
        for key, block_id in blocks.items():
            if block_id in decided:
                continue
            decided.add(block_id)
            base = parent.get(key)
            base = bases.get(base, base)  # one level: a delta's base, never the delta
            if base is not None and base != block_id:
                bases[block_id] = base
    return bases


def _rewrite(
    store: Store,
    pages: list[tuple[int, int]],
    bases: dict[int, int],
    lossless: bool,
    progress: Progress | None,
):
    """Write every live block of ``pages`` (id, length) into new pages, in the same order.

    Returns (old page, slot) -> (new page, slot), the rows of ``block_codings`` and the pages."""
    live = store.catalog.live_slots()
    _, next_page, next_segment = store.next_ids()
    segments = SegmentWriter(store.pages_dir, next_segment, store.settings.segment_bytes)
    builder = PageBuilder(store.settings.page_size)
    moved: dict[tuple[int, int], tuple[int, int]] = {}
    codings: dict[int, tuple[int, int, int | None, int]] = {}  # a block with copies: once
    written = []
    try:
        total = sum(length for _, length in pages)
        for page_id, length in pages:
            with store.pool.pinned(page_id) as page:
                for slot, entry in enumerate(page.entries):
                    if (page_id, slot) not in live:
                        continue
                    space = builder.reserve(entry.nbytes)
                    space[:] = page.block_bytes(slot)
                    codec, against = codecs.RAW, None
                    if lossless:
                        base = bases.get(entry.block_id)
                        against = (
                            None if base is None else store.pool.block_bytes(base, entry.order)
                        )
                        itemsize = page.block(slot).itemsize
                        codec = codecs.choose(np.frombuffer(space, np.uint8), itemsize, against)
                    delta = codec in codecs.DELTAS
                    new_slot = builder.commit(
                        entry.block_id,
                        entry.dtype,
                        entry.rows,
                        entry.cols,
                        entry.nbytes,
                        entry.order,
                        codec,
                        base=bases[entry.block_id] if delta else 0,
                        base_bytes=against if delta else None,
                    )
                    moved[page_id, slot] = (next_page, new_slot)
            if len(builder):
                written.append(segments.append(next_page, *builder.build(next_page)))
                codings.update((coding[0], coding) for coding in builder.codings())
                next_page += 1
                builder.reset()
            if progress:
                progress(length, total)
        segments.finish()
    except BaseException:
        segments.abort()
        raise
    return moved, list(codings.values()), written
