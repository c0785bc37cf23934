"""Repacking: rewrite every block into new pages laid out by a packing algorithm, atomically.

Layouts may store a shared block on several pages (see ``weightdb.packing.layout``): then
every page holds only blocks that all its readers use, and each model reads fewer pages than
when each block is stored once. The layout says which page each model reads each block from
(``Layout.sources``). Each (block, page) occurrence that some model reads is written once;
occurrences no model reads (the netsDB packers leave some, even whole pages) are not written.
Of a block's occurrences the one most models read is its primary copy (``blocks.page_id,
slot``), and every model that reads it elsewhere gets a ``block_copies`` row.

Pages are written in reading order: models in import order, each front to back, so the pages
one model reads lie in a few contiguous runs of the segment files and a cold read of a model
streams instead of seeking (the layout's own page order follows no model).

A repack never makes the database worse: once the new pages are written it compares the two
layouts by pages read per request (weighted by how often each model is served), then pages,
then page bytes, and unless the new one is strictly better it deletes the new files and keeps
the current layout (``force`` commits it anyway).

New pages go to new segment files; one catalog transaction then inserts them, points every
block at its primary copy, replaces all copy rows, retires the old pages (still readable for
in-flight requests, deleted after the grace period) and bumps the layout generation. A crash
before the commit leaves the old layout and orphaned files that the next writer removes; after
it, the new layout. Either way every model exports bit-identically.

Copies are a repack's business only: other writes never create them, and the writes that take
blocks away from models drop the copies that no longer hold (``reclaim``). A page that is left
holding only primaries nobody reads from (after ``rm``) stays until the next repack.
"""

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from weightdb.packing import DEFAULT_ALGORITHM, DEFAULT_TIME_LIMIT, Instance, Layout, solve
from weightdb.progress import Progress
from weightdb.storage import codecs
from weightdb.storage.blocking import BlockLayout, panel_runs
from weightdb.storage.page_files import PageLocation, SegmentWriter
from weightdb.storage.page_format import Page, PageBuilder
from weightdb.storage.panel_order import panel_axes
from weightdb.storage.store import Store

NOMINAL_ITEMSIZE = 4  # float32: the block size that page capacity in blocks is counted in

Occurrence = tuple[int, int]
"""(index of a layout page, block id): one stored copy of a block."""


@dataclass
class RepackReport:
    algorithm: str
    blocks_per_page: int
    pages_before: int
    pages_after: int
    lower_bound_pages: int
    copied_blocks: int
    """Distinct blocks stored on more than one page after the repack."""
    page_bytes_before: int
    page_bytes_after: int
    """Bytes of all pages in use, copies included (``stats()["page_bytes"]``)."""
    pages_read_before: dict[str, dict[str, int]]
    pages_read_after: dict[str, dict[str, int]]
    weighted_pages_read_before: float
    weighted_pages_read_after: float
    """Pages read per request, averaged over models weighted by how often each is served."""
    kept_current: bool
    """The new layout was not better, so the database kept its current one (the ``after``
    numbers are then the current layout's; ``candidate`` says what was declined)."""
    candidate: dict[str, float]
    """The new layout's weighted pages read, pages and page bytes, committed or not."""
    search_finished: bool | None
    """For ``weightdb``: False if its search stopped at the time limit (best layout so far)."""
    seconds: float

    def to_json(self) -> dict:
        return {**vars(self), "gap_to_lower_bound": self.pages_after - self.lower_bound_pages}


@dataclass(frozen=True)
class Placement:
    """A layout as the catalog stores it."""

    primary: dict[int, int]
    """Block -> the layout page of its primary copy."""
    copies: list[tuple[str, int, int]]
    """(model, block, layout page) for every model that reads a block off its primary page."""
    sources: dict[str, dict[int, int]]
    """Model -> block -> the layout page it reads the block from."""

    @classmethod
    def of(cls, layout: Layout) -> "Placement":
        sources = layout.sources()
        readers = Counter(
            (index, block) for chosen in sources.values() for block, index in chosen.items()
        )
        primary: dict[int, int] = {}
        for (index, block), _ in sorted(readers.items(), key=lambda item: (-item[1], item[0])):
            primary.setdefault(block, index)
        return cls(
            primary=primary,
            copies=[
                (model, block, index)
                for model, chosen in sources.items()
                for block, index in chosen.items()
                if index != primary[block]
            ],
            sources=sources,
        )

    @property
    def copied_blocks(self) -> int:
        """Blocks stored on more than one page (only occurrences some model reads are stored)."""
        stored = {
            (index, block) for chosen in self.sources.values() for block, index in chosen.items()
        }
        return sum(1 for count in Counter(block for _, block in stored).values() if count > 1)


def blocks_per_page(store: Store) -> int:
    rows, cols = store.settings.block_shape
    return max(1, store.settings.page_size // (rows * cols * NOMINAL_ITEMSIZE))


def repack(
    store: Store,
    algorithm: str = DEFAULT_ALGORITHM,
    frequencies: dict[str, float] | None = None,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    progress: Progress | None = None,
    force: bool = False,
) -> RepackReport:
    """Store every block in the layout ``algorithm`` finds, if it is better than the current
    one or ``force`` is set (see the module docstring)."""
    start = time.perf_counter()
    catalog = store.catalog
    with store.writer_lock:
        store.collect_garbage()
        catalog.refuse_damaged()
        models = catalog.model_blocks()
        instance = Instance.from_models(models, blocks_per_page(store), frequencies)
        solved = solve(instance, algorithm, time_limit, progress) if models else None
        layout = solved.layout if solved else Layout(pages=(), reads={})
        placement = Placement.of(layout)
        before = catalog.pages_read()
        live = catalog.live_pages()
        old_pages = {p for p, _ in live}
        bytes_before = sum(length for _, length in live)
        locations, new_pages, stored = _write_layout(store, _reading_order(store, placement))
        candidate = {
            "weighted_pages_read": _weighted(instance, _stored_reads(placement, locations)),
            "pages": len(new_pages),
            "page_bytes": sum(page.length for page in new_pages),
        }
        weighted_before = _weighted(instance, {m: row["pages"] for m, row in before.items()})
        current = (weighted_before, len(old_pages), bytes_before)
        kept = not force and not _better(tuple(candidate.values()), current)
        if kept:
            store.collect_garbage()  # the new pages' files, which no page refers to
        else:
            _commit(store, placement, locations, stored, new_pages, old_pages)
        after = catalog.pages_read()
        bytes_after = catalog.page_bytes()
    return RepackReport(
        algorithm=algorithm,
        blocks_per_page=instance.blocks_per_page,
        pages_before=len(old_pages),
        pages_after=len(old_pages) if kept else len(new_pages),
        lower_bound_pages=instance.lower_bound_pages,
        copied_blocks=catalog.copied_block_count() if kept else placement.copied_blocks,
        page_bytes_before=bytes_before,
        page_bytes_after=bytes_after,
        pages_read_before=before,
        pages_read_after=after,
        weighted_pages_read_before=weighted_before,
        weighted_pages_read_after=_weighted(
            instance, {m: row["pages"] for m, row in after.items()}
        ),
        kept_current=kept,
        candidate=candidate,
        search_finished=solved.search_finished if solved else None,
        seconds=time.perf_counter() - start,
    )


def _commit(
    store: Store,
    placement: Placement,
    locations: dict[Occurrence, tuple[int, int]],
    stored: dict[tuple[int, int], int],
    new_pages: list[PageLocation],
    old_pages: set[int],
) -> None:
    """Switch the catalog to the new pages in one transaction and retire the old ones; the
    models' digests, checked before planning (``repack``), are recorded anew. A coded block's
    stored bytes become those of its primary place (``stored``: (page id, block id) -> bytes)."""
    catalog = store.catalog
    model_ids = catalog.model_ids()
    primaries = [(*locations[index, block], block) for block, index in placement.primary.items()]
    with catalog.transaction():
        catalog.place_blocks(
            new_pages,
            primaries,
            [
                (model_ids[model], block, *locations[index, block])
                for model, block, index in placement.copies
            ],
            old_pages,
        )
        catalog.set_stored_bytes(
            [
                (stored[page_id, block], block)
                for page_id, _, block in primaries
                if (page_id, block) in stored
            ]
        )
    store.pool.discard(old_pages)


def _stored_reads(
    placement: Placement, locations: dict[Occurrence, tuple[int, int]]
) -> dict[str, int]:
    """Model -> the written pages it reads (a layout page may have continued on more)."""
    return {
        model: len({locations[index, block][0] for block, index in chosen.items()})
        for model, chosen in placement.sources.items()
    }


def _weighted(instance: Instance, reads: dict[str, int]) -> float:
    total = math.fsum(map(instance.frequency, reads))
    weighted = math.fsum(instance.frequency(model) * pages for model, pages in reads.items())
    return weighted / total if total else 0.0


def _better(new: tuple[float, ...], current: tuple[float, ...]) -> bool:
    """Lexicographically smaller, ignoring float noise in the weighted pages read."""
    if not math.isclose(new[0], current[0], rel_tol=1e-9, abs_tol=1e-12):
        return new[0] < current[0]
    return new[1:] < current[1:]


def _reading_order(store: Store, placement: Placement) -> list[Occurrence]:
    """Every occurrence some model reads, in the order of reading every model front to back in
    import order, each tensor by its panels (``panel_order``), then the bases of its deltas:
    the order to write pages and their blocks in, so that a panel's blocks stay back to back
    where a page holds them."""
    catalog = store.catalog
    order: dict[Occurrence, None] = {}
    for model_id, model, graph in catalog.models_in_order():
        axes = panel_axes(graph)
        for tensor in catalog.tensor_rows(model_id):
            grid = catalog.tensor_grid(tensor.tensor_id)
            shape = tuple(json.loads(tensor.shape))
            layout = BlockLayout(shape, tensor.block_rows, tensor.block_cols)
            for run, _ in panel_runs(layout, axes.get(tensor.name)):
                for position in run:
                    block_id = grid[position]
                    order.setdefault((placement.sources[model][block_id], block_id))
        # The bases of the model's deltas last, so that they never split a panel.
        for base in catalog.delta_bases(model_id):
            order.setdefault((placement.sources[model][base], base))
    return list(order)


def _write_layout(
    store: Store, order: list[Occurrence]
) -> tuple[dict[Occurrence, tuple[int, int]], list[PageLocation], dict[tuple[int, int], int]]:
    """Copy every occurrence into the new pages, pages and blocks in ``order``; a layout page
    whose blocks exceed the page size in bytes (wide dtypes) continues on a further page of the
    same blocks' readers. Coded blocks (the lossless tier) keep their codec and base: those
    coded on their own are copied as stored, those of a page's stream are coded again in the
    new page's. Returns where each occurrence went (page id, slot), the pages written, and the
    stored bytes of each coded block on each page ((page id, block id) -> bytes: a stream's
    are shared among its blocks, ``PageBuilder.codings``)."""
    where = store.catalog.block_places()
    _, next_page, next_segment = store.next_ids()
    segments = SegmentWriter(store.pages_dir, next_segment, store.settings.segment_bytes)
    builder = PageBuilder(store.settings.page_size)
    locations: dict[Occurrence, tuple[int, int]] = {}
    written: list[PageLocation] = []
    stored: dict[tuple[int, int], int] = {}

    def flush() -> None:
        nonlocal next_page
        if len(builder):
            written.append(segments.append(next_page, *builder.build(next_page)))
            for block_id, _, _, nbytes in builder.codings():
                stored[next_page, block_id] = nbytes
            next_page += 1
            builder.reset()

    by_page: dict[int, list[int]] = defaultdict(list)
    for index, block_id in order:
        by_page[index].append(block_id)
    coded = store.catalog.coded_block_ids()
    as_stored: dict[int, Page] = {}  # the last old page read from disk, its blocks still coded
    try:
        for index, page in by_page.items():
            for block_id in page:
                dtype, rows, cols, nbytes, old_page, old_slot = where[block_id]
                if not builder.fits(nbytes):
                    flush()
                if block_id in coded:
                    if old_page not in as_stored:
                        as_stored = {old_page: store.reader.read(store.locate_page(old_page))}
                    entry = as_stored[old_page].entries[old_slot]
                base_bytes = None
                if block_id in coded and entry.codec not in codecs.FRAMED:  # copied as stored
                    builder.reserve(entry.stored_nbytes)[:] = as_stored[old_page].stored(old_slot)
                else:  # raw, or coded again in the new page's stream: copied decoded
                    with store.pool.pinned(old_page) as source:
                        entry = source.entries[old_slot]
                        builder.reserve(nbytes)[:] = source.block_bytes(old_slot)
                    if entry.codec in codecs.DELTAS:
                        base_bytes = store.pool.block_bytes(entry.base, entry.order)
                slot = builder.commit(
                    block_id,
                    dtype,
                    rows,
                    cols,
                    nbytes,
                    entry.order,
                    entry.codec,
                    None if entry.codec in codecs.FRAMED else entry.stored_nbytes,
                    entry.base,
                    base_bytes,
                )
                locations[index, block_id] = (next_page, slot)
            flush()
        segments.finish()
    except BaseException:
        segments.abort()
        raise
    return locations, written, stored
