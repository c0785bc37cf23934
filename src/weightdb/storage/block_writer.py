"""Writes blocks into new pages with exact deduplication, for one catalog transaction.

A block whose dtype, shape and bytes equal a block already stored (in the database or earlier
in this write) is not written again: its digest is looked up, then the bytes are compared, so
a digest collision can never merge two different blocks. New blocks are appended to pages
built in memory and flushed to a new segment file; nothing becomes visible until the caller
commits the rows this writer returns.
"""

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightdb.storage.buffer_pool import BufferPool
from weightdb.storage.page_files import PageLocation, PageReader, SegmentWriter
from weightdb.storage.page_format import PageBuilder


def block_digest(dtype: str, rows: int, cols: int, data: bytes | memoryview) -> bytes:
    digest = hashlib.sha256(f"{dtype}:{rows}x{cols}:".encode())
    digest.update(data)
    return digest.digest()


@dataclass
class _NewBlock:
    block_id: int
    digest: bytes
    dtype: str
    rows: int
    cols: int
    nbytes: int
    page_id: int = -1
    slot: int = -1


@dataclass
class BlockWriter:
    conn: sqlite3.Connection
    pool: BufferPool
    pages_dir: Path
    page_size: int
    segment_bytes: int
    next_block_id: int
    next_page_id: int
    next_segment: int
    new_blocks: list[_NewBlock] = field(default_factory=list)
    new_pages: list[PageLocation] = field(default_factory=list)
    reused_bytes: int = 0

    def __post_init__(self) -> None:
        self._segments = SegmentWriter(self.pages_dir, self.next_segment, self.segment_bytes)
        self._page = PageBuilder(self.page_size)
        self._page_bytes: dict[int, bytes] = {}  # block id -> bytes, for the open page
        self._written: dict[bytes, list[_NewBlock]] = {}  # digest -> blocks of this write
        self._locations: dict[int, PageLocation] = {}
        self._reader = PageReader(self.pages_dir)

    def add(self, dtype: str, block: np.ndarray) -> tuple[int, bytes]:
        """Store a 2-D block (or find its twin); return its block id and content digest."""
        data = np.ascontiguousarray(block)
        raw = data.reshape(-1).view(np.uint8).data if data.size else b""
        rows, cols = data.shape
        digest = block_digest(dtype, rows, cols, raw)
        existing = self._find(digest, raw)
        if existing is not None:
            self.reused_bytes += len(raw)
            return existing, digest
        new = _NewBlock(self.next_block_id, digest, dtype, rows, cols, len(raw))
        self.next_block_id += 1
        if not self._page.fits(len(raw)):
            self._flush_page()
        new.page_id = self.next_page_id
        raw = bytes(raw)
        new.slot = self._page.add(new.block_id, dtype, rows, cols, raw)
        self._page_bytes[new.block_id] = raw
        self._written.setdefault(digest, []).append(new)
        self.new_blocks.append(new)
        return new.block_id, digest

    def _find(self, digest: bytes, raw: bytes | memoryview) -> int | None:
        for candidate in self._written.get(digest, ()):
            if candidate.block_id in self._page_bytes:
                stored = self._page_bytes[candidate.block_id]
            else:
                page = self._reader.read(self._locations[candidate.page_id])
                stored = page.block_bytes(candidate.slot)
            if stored == raw:
                return candidate.block_id
        rows = self.conn.execute(
            "SELECT block_id, page_id, slot FROM blocks WHERE digest = ?", (digest,)
        ).fetchall()
        for block_id, page_id, slot in rows:
            with self.pool.pinned(page_id) as page:
                if page.block_bytes(slot) == raw:
                    return block_id
        return None

    def _flush_page(self) -> None:
        if not len(self._page):
            return
        location = self._segments.append(self.next_page_id, self._page.build(self.next_page_id))
        self.new_pages.append(location)
        self._locations[location.page_id] = location
        self.next_page_id += 1
        self._page = PageBuilder(self.page_size)
        self._page_bytes = {}

    def finish(self) -> None:
        """Flush the last page and make all written pages durable before the commit."""
        self._flush_page()
        self._segments.finish()
        self._reader.close()

    def abort(self) -> None:
        self._reader.close()
        self._segments.abort()

    def insert_rows(self, conn: sqlite3.Connection, refs: dict[int, int]) -> None:
        """Inside the caller's transaction: the new pages and blocks, and reference counts."""
        conn.executemany(
            "INSERT INTO pages(page_id, file, offset, length, checksum) VALUES (?, ?, ?, ?, ?)",
            [(p.page_id, p.file, p.offset, p.length, p.checksum) for p in self.new_pages],
        )
        new_ids = set()
        rows = []
        for b in self.new_blocks:
            new_ids.add(b.block_id)
            rows.append(
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
            )
        conn.executemany(
            "INSERT INTO blocks(block_id, digest, dtype, rows, cols, nbytes, page_id, slot, refs)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "UPDATE blocks SET refs = refs + ? WHERE block_id = ?",
            [(count, block_id) for block_id, count in refs.items() if block_id not in new_ids],
        )
