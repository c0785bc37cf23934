"""Writes blocks into new pages with exact deduplication, for one catalog transaction.

A block whose dtype, shape and bytes equal a block already stored (in the database or earlier
in this write) is not written again: its digest is looked up, then the bytes are compared, so
a digest collision can never merge two different blocks. Nothing becomes visible until the
caller commits the rows this writer returns.

Each block is copied once, from its source straight into a page buffer, and hashed there
(a block stored column-major, see ``page_format``, is hashed in row-major order, so its
digest and duplicate check do not depend on how it is stored). ``start_run`` keeps a run of
blocks the engine reads as one operand on one page when a page can hold it.
Two page buffers alternate: while one fills, the other is written by a background thread
(hashing and writes release the GIL, so both cores work).

With ``lossless`` on, a new block is stored coded when that saves enough (``codecs.choose``):
as a delta against the ``base`` block the caller names (``lineage``), else as byte planes;
the page codes its coded blocks together as it is built (``PageBuilder``).
Its digest stays that of its row-major content, so duplicates are found whatever the coding.
"""

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightdb.storage import codecs
from weightdb.storage.buffer_pool import BufferPool
from weightdb.storage.catalog import Catalog
from weightdb.storage.page_files import PageLocation, PageReader, SegmentWriter
from weightdb.storage.page_format import COLUMN_MAJOR, ROW_MAJOR, PageBuilder
from weightdb.storage.page_images import block_content


def block_digest(dtype: str, rows: int, cols: int, data: bytes | memoryview) -> bytes:
    digest = hashlib.sha256(f"{dtype}:{rows}x{cols}:".encode())
    digest.update(data)
    return digest.digest()


@dataclass(frozen=True)
class BlockRecord:
    """One row of the ``blocks`` relation (without its reference count)."""

    block_id: int
    digest: bytes
    dtype: str
    rows: int
    cols: int
    nbytes: int
    page_id: int
    slot: int

    @property
    def shape_key(self) -> tuple[str, int, int]:
        """Blocks can only stand in for each other when dtype and shape agree."""
        return self.dtype, self.rows, self.cols


@dataclass(frozen=True)
class BlockCoding:
    """One row of ``block_codings``: how a coded block is stored."""

    block_id: int
    codec: int
    base_block_id: int | None
    stored_nbytes: int


class BlockWriter:
    def __init__(
        self,
        catalog: Catalog,
        pool: BufferPool,
        pages_dir: Path,
        page_size: int,
        segment_bytes: int,
        next_ids: tuple[int, int, int],
        lossless: bool = False,
    ) -> None:
        self.catalog = catalog
        self.lossless = lossless
        self.codings: list[BlockCoding] = []
        self.pool = pool
        self.next_block_id, self.next_page_id, first_segment = next_ids
        self.new_blocks: list[BlockRecord] = []
        self._segments = SegmentWriter(pages_dir, first_segment, segment_bytes)
        self._reader = PageReader(pages_dir)
        self._builders = [PageBuilder(page_size), PageBuilder(page_size)]
        self._in_flight: list[Future | None] = [None, None]  # last write from each builder
        self._current = 0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightdb-pages")
        self._writes: dict[int, Future[PageLocation]] = {}
        self._written: dict[bytes, list[BlockRecord]] = {}  # digest -> blocks of this write

    @property
    def _page(self) -> PageBuilder:
        return self._builders[self._current]

    def start_run(self, nbytes: int) -> None:
        """The next blocks, ``nbytes`` in all, are one run: start a new page unless the open
        one holds them all or no page could."""
        if nbytes > self._page.remaining() and nbytes <= self._page.capacity:
            self._flush_page()

    def add(
        self, dtype: str, block: np.ndarray, order: int = ROW_MAJOR, base: int | None = None
    ) -> tuple[int, bytes]:
        """Store a 2-D block (or find its twin); return its block id and content digest.

        ``base`` is a stored block of the same dtype and shape, never a delta itself, to try
        coding this one against."""
        rows, cols = block.shape
        if not self._page.fits(block.nbytes):
            self._flush_page()
        space = self._page.reserve(block.nbytes)
        if order == COLUMN_MAJOR:
            np.copyto(np.frombuffer(space, dtype=block.dtype).reshape(cols, rows), block.T)
            content: memoryview | bytes = np.ascontiguousarray(block).tobytes()
        else:
            np.copyto(np.frombuffer(space, dtype=block.dtype).reshape(rows, cols), block)
            content = space
        digest = block_digest(dtype, rows, cols, content)
        existing = self._find(digest, content)
        if existing is not None:
            return existing, digest
        codec, against = codecs.RAW, None
        if self.lossless:
            against = None if base is None else self.pool.block_bytes(base, order)
            codec = codecs.choose(np.frombuffer(space, np.uint8), block.itemsize, against)
        delta = codec in codecs.DELTAS
        slot = self._page.commit(
            self.next_block_id,
            dtype,
            rows,
            cols,
            block.nbytes,
            order,
            codec,
            base=base if delta else 0,
            base_bytes=against if delta else None,
        )
        new = BlockRecord(
            self.next_block_id, digest, dtype, rows, cols, block.nbytes, self.next_page_id, slot
        )
        self.next_block_id += 1
        self._written.setdefault(digest, []).append(new)
        self.new_blocks.append(new)
        return new.block_id, digest

    def _find(self, digest: bytes, content: memoryview | bytes) -> int | None:
        for candidate in self._written.get(digest, ()):
            if candidate.page_id == self.next_page_id:  # still in the open page
                page = self._page.page(candidate.page_id)
            else:
                page = self._reader.read(self._writes[candidate.page_id].result())
            stored = block_content(page, candidate.slot, self.pool.bases)
            if stored == content:
                return candidate.block_id
        for block_id, page_id, slot in self.catalog.blocks_with_digest(digest):
            with self.pool.pinned(page_id) as page:
                if page.block_content(slot) == content:
                    return block_id
        return None

    def _flush_page(self) -> None:
        if not len(self._page):
            return
        page_id = self.next_page_id
        pieces, length, checksum = self._page.build(page_id)
        self.codings += [BlockCoding(*coding) for coding in self._page.codings()]
        write = self._io.submit(self._segments.append, page_id, pieces, length, checksum)
        self._writes[page_id] = write
        self._in_flight[self._current] = write
        self.next_page_id += 1
        self._current ^= 1
        previous = self._in_flight[self._current]
        if previous is not None:
            previous.result()  # the other buffer's page is on its way to disk: reuse it
        self._page.reset()

    @property
    def new_pages(self) -> list[PageLocation]:
        return [write.result() for write in self._writes.values()]

    def finish(self) -> None:
        """Flush the last page and make all written pages durable before the commit."""
        try:
            self._flush_page()
            for write in self._writes.values():
                write.result()
            self._segments.finish()
        finally:
            self._io.shutdown()
            self._reader.close()

    def abort(self) -> None:
        self._io.shutdown(wait=True)
        self._reader.close()
        self._segments.abort()

    def insert_rows(self, refs: dict[int, int]) -> None:
        """Inside the caller's transaction: the new pages and blocks, and reference counts."""
        self.catalog.insert_pages(self.new_pages)
        new_ids = {b.block_id for b in self.new_blocks}
        self.catalog.insert_blocks(
            [
                (
                    b.block_id,
                    b.digest,
                    b.dtype,
                    b.rows,
                    b.cols,
                    b.nbytes,
                    b.page_id,
                    b.slot,
                    refs.get(b.block_id, 0),
                )
                for b in self.new_blocks
            ],
            [(c.block_id, c.codec, c.base_block_id, c.stored_nbytes) for c in self.codings],
        )
        self.catalog.add_references(
            {block_id: count for block_id, count in refs.items() if block_id not in new_ids}
        )
