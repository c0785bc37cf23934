"""The on-disk format of one page: a checksummed header, block data, and a block directory.

    offset 0   magic       8 bytes  b"WDBPAGE\\0"
           8   checksum    u32      CRC-32 of every byte from offset 12 to the page's end
          12   version     u16      page format version
          14   flags       u16      reserved, 0
          16   blocks      u32      number of directory entries
          20   page id     u64
          28   length      u64      bytes of this page: header, data and directory
          36   directory   u64      offset of the directory
          44   reserved    20 bytes
          64   data        each block's bytes as stored, at 64-byte aligned offsets
               directory   blocks x 72 bytes: block id u64, offset u64, nbytes u64,
                           rows u64, cols u64, dtype u8, order u8, codec u8, 5 reserved
                           bytes, stored offset u64, stored nbytes u64, base block id u64

The page size setting bounds the data area, so a page of 4 MiB holds exactly 4 MiB of blocks
(16 blocks of 256x256 float32, 64 of 128x128); header and directory come on top. Blocks are
written straight into the page buffer as they arrive and the directory follows them, so a
block is copied once on its way to disk. Pages are self-describing (an entry carries the
block's dtype and shape) and the checksum covers the version, so a page of an unknown version
is reported as such, not as corruption.

A block's ``order`` says how its bytes lie: 0 row-major (C order), 1 column-major (stored as
its transpose). The engine multiplies by runs of blocks as one operand without copying them:
the blocks of one block column stored row-major one after another form a (K, width) matrix,
and so do the blocks of one block row stored column-major, which is the operand of
``x @ W.T`` (Gemm with transB, Conv). ``Page.block`` always returns the block as the matrix
has it, so only the engine's panels and the writers know about ``order``. Format 1 had no
``order`` byte (it was reserved, hence 0): format 1 pages read as row-major.

Format 3 adds a codec per block (``codecs``): a block may be stored coded, ``stored nbytes``
bytes at ``stored offset``, optionally as a delta against ``base block id`` (0 for none).
``offset`` and ``nbytes`` say where the block lies in the page's *image*: the page as it would
be were every block raw, which is what the buffer pool decodes a coded page into on a miss, so
blocks, runs and panels read from an image exactly as from a raw page. The page size bounds
the image's data area, so a coded page holds the blocks its raw twin would, in fewer bytes.
Formats 1 and 2 read as pages of raw blocks (their entries are 48 bytes).

Blocks of codecs 5 and 6 (``codecs.FRAMED``) are coded together: those of one codec and
itemsize form one stream, written after the other blocks' bytes. Each records the stream's
stored offset and nbytes; its bytes are the stream's decoded bytes after those of the blocks
before it (in slot order) in the same stream. A weightdb that knows no codec 5 refuses such a
page by its codec.
"""

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from isal.isal_zlib import crc32

from weightdb.errors import CorruptPageError, FormatVersionError
from weightdb.storage import codecs, dtypes

MAGIC = b"WDBPAGE\0"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
HEADER = struct.Struct("<8sIHHIQQQ20x")
DATA_START = HEADER.size
ENTRY = struct.Struct("<QQQQQBBB5xQQQ")
RAW_ENTRY = struct.Struct("<QQQQQBB6x")  # formats 1 and 2
RAW = codecs.RAW
ROW_MAJOR, COLUMN_MAJOR = 0, 1
ALIGN = 64
# On-disk dtype codes: append only, never renumber.
DTYPE_CODES = [
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
]
_CODE_OF = {name: code for code, name in enumerate(DTYPE_CODES)}


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class BlockEntry:
    block_id: int
    offset: int
    nbytes: int
    rows: int
    cols: int
    dtype: str
    order: int = ROW_MAJOR
    codec: int = RAW
    stored_offset: int = -1
    """Where the block's bytes lie in the page as stored (``offset`` if raw and unmoved)."""
    stored_nbytes: int = -1
    base: int = 0
    """The block a delta was coded against (its bytes as stored, in this block's order)."""

    @property
    def coded(self) -> bool:
        return self.codec != RAW


class PageBuilder:
    """Fills one reusable page buffer: ``reserve`` space, write a block there, ``commit`` it.

    A block that turns out to be a duplicate is simply not committed; the next reservation
    reuses its space. A block coded on its own (codecs 1-4, as a repack copies it) is committed
    with the bytes it was coded into (written over its reservation): the page's image still
    reserves its raw size. A block of a ``codecs.FRAMED`` codec is committed raw, with its
    base's bytes if a delta; ``build`` codes those blocks into streams, written
    after the other blocks, whose bytes move up to close the gaps.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray(DATA_START + capacity)
        self.entries: list[tuple[int, ...]] = []
        self._end = DATA_START  # of the stored bytes
        self._image_end = DATA_START
        self._framed: dict[int, np.ndarray | None] = {}  # slot -> base bytes, until ``build``
        self._shares: dict[int, int] = {}  # slot -> stored bytes attributed, after ``build``

    def __len__(self) -> int:
        return len(self.entries)

    def fits(self, nbytes: int) -> bool:
        return self._image_end + nbytes <= len(self.buffer)

    def reserve(self, nbytes: int) -> memoryview:
        """Writable space for the next block's bytes (call ``fits`` first)."""
        return memoryview(self.buffer)[self._end : self._end + nbytes]

    def remaining(self) -> int:
        """Bytes of block data this page's image still takes."""
        return len(self.buffer) - self._image_end

    def commit(
        self,
        block_id: int,
        dtype: str,
        rows: int,
        cols: int,
        nbytes: int,
        order: int = ROW_MAJOR,
        codec: int = RAW,
        stored_nbytes: int | None = None,
        base: int = 0,
        base_bytes: np.ndarray | None = None,
    ) -> int:
        """Keep the bytes last written to ``reserve``: ``stored_nbytes`` of them if the block
        is coded on its own, else ``nbytes`` (raw, or to be coded in a stream: a delta's
        ``base_bytes`` are its base's bytes in ``order``). Returns the block's slot."""
        stored = nbytes if stored_nbytes is None else stored_nbytes
        image_place = (self._image_end, nbytes)
        shape = (rows, cols, _CODE_OF[dtype], order)
        self.entries.append((block_id, *image_place, *shape, codec, self._end, stored, base))
        if codec in codecs.FRAMED:
            self._framed[len(self.entries) - 1] = base_bytes
        self._end = min(_align(self._end + stored), len(self.buffer))
        self._image_end = min(_align(self._image_end + nbytes), len(self.buffer))
        return len(self.entries) - 1

    def page(self, page_id: int) -> "Page":
        """The blocks committed so far, as a page read back (valid until ``reset``); blocks
        still to be coded in a stream read as the raw blocks they are until ``build``."""
        entries = [
            _entry((*fields[:7], RAW, *fields[8:10], 0)) if slot in self._framed else _entry(fields)
            for slot, fields in enumerate(self.entries)
        ]
        return Page(memoryview(self.buffer)[: self._end], entries, page_id)

    def build(self, page_id: int) -> tuple[list[memoryview | bytes], int, int]:
        """The page as pieces to write in order, its length and its checksum.

        The pieces point into this builder's buffer: write them before calling ``reset``.
        """
        streams = self._code_streams()
        data = memoryview(self.buffer)[: self._end]
        directory_at = self._end + sum(len(stream) for stream in streams)
        directory = bytearray(ENTRY.size * len(self.entries))
        for slot, entry in enumerate(self.entries):
            ENTRY.pack_into(directory, slot * ENTRY.size, *entry)
        length = directory_at + len(directory)
        HEADER.pack_into(
            self.buffer, 0, MAGIC, 0, VERSION, 0, len(self.entries), page_id, length, directory_at
        )
        checksum = crc32(data[12:])
        for piece in (*streams, directory):
            checksum = crc32(piece, checksum)
        struct.pack_into("<I", self.buffer, 8, checksum)
        return [data, *streams, bytes(directory)], length, checksum

    def _code_streams(self) -> list[bytes]:
        """Code the framed blocks into one stream per codec and itemsize (a delta's noise
        bits and a lone block's differ, so each stream keeps or stores its byte groups), move
        the other blocks' bytes up over theirs, and point the framed entries at their stream,
        which follows the data (each block of a stream records its offset and length)."""
        if not self._framed:
            return []
        buffer = np.frombuffer(self.buffer, np.uint8)
        kinds: dict[tuple[int, int], list[int]] = {}
        for slot in self._framed:
            itemsize = dtypes.by_name(DTYPE_CODES[self.entries[slot][5]]).itemsize
            kinds.setdefault((self.entries[slot][7], itemsize), []).append(slot)
        streams = []
        for (_, itemsize), slots in kinds.items():
            blocks = []
            for slot in slots:
                start, nbytes = self.entries[slot][8:10]
                blocks.append((buffer[start : start + nbytes], self._framed[slot]))
            streams.append((slots, codecs.encode_stream(blocks, itemsize)))
        end = DATA_START
        for slot, entry in enumerate(self.entries):
            if slot in self._framed:
                continue
            start, stored = entry[8:10]
            buffer[end : end + stored] = buffer[start : start + stored]  # numpy minds overlap
            self.entries[slot] = (*entry[:8], end, stored, entry[10])
            end = _align(end + stored)
        self._end = min(end, len(self.buffer))
        offset = self._end
        for slots, stream in streams:
            raw = sum(self.entries[slot][2] for slot in slots)
            for slot in slots:
                entry = self.entries[slot]
                self.entries[slot] = (*entry[:8], offset, len(stream), entry[10])
                self._shares[slot] = len(stream) * entry[2] // raw
            self._shares[slots[-1]] += len(stream) - sum(self._shares[s] for s in slots)
            offset += len(stream)
        self._framed = {}
        return [stream for _, stream in streams]

    def codings(self) -> list[tuple[int, int, int | None, int]]:
        """(block id, codec, base block id or None, stored bytes) of each coded block of the
        page ``build`` made: a stream's bytes are shared among its blocks by raw size."""
        return [
            (entry[0], entry[7], entry[10] or None, self._shares.get(slot, entry[9]))
            for slot, entry in enumerate(self.entries)
            if entry[7] != RAW
        ]

    def reset(self) -> None:
        self.entries = []
        self._end = DATA_START
        self._image_end = DATA_START
        self._framed = {}
        self._shares = {}


def _entry(fields: tuple[int, ...]) -> BlockEntry:
    block_id, offset, nbytes, rows, cols, code, order, codec, stored_offset, stored, base = fields
    dtype = DTYPE_CODES[code]
    return BlockEntry(
        block_id, offset, nbytes, rows, cols, dtype, order, codec, stored_offset, stored, base
    )


class Page:
    """A verified page in memory; ``block`` returns zero-copy read-only views into it.

    A page holding coded blocks, as read from disk, is not its image: only ``stored`` reads it,
    until ``page_images.decode_page`` makes the image.
    """

    def __init__(
        self,
        data: bytes | memoryview,
        entries: list[BlockEntry],
        page_id: int,
        image: bool = False,
    ) -> None:
        """``image``: ``data`` is the decoded image of a page of coded blocks."""
        self.data = data
        self.entries = entries
        self.page_id = page_id
        self.coded = not image and any(entry.coded for entry in entries)
        """The page as read from disk, holding coded blocks: not readable until decoded."""

    @property
    def image_nbytes(self) -> int:
        """Bytes of this page's image: what the buffer pool holds of it."""
        if not self.coded:
            return len(self.data)
        return max(DATA_START, *(entry.offset + entry.nbytes for entry in self.entries))

    def stored(self, slot: int) -> memoryview:
        """Block ``slot``'s bytes as stored on disk (coded or not)."""
        entry = self.entries[slot]
        return memoryview(self.data)[
            entry.stored_offset : entry.stored_offset + entry.stored_nbytes
        ]

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @cached_property
    def strides(self) -> np.ndarray:
        """For each slot: the element its block starts at, counted in elements of its dtype,
        and the elements between its rows and between its columns (the matrix's view), an
        (n, 3) array, so many blocks' elements are found in one indexing step."""
        table = np.empty((len(self.entries), 3), np.int64)
        for slot, entry in enumerate(self.entries):
            first = entry.offset // dtypes.by_name(entry.dtype).itemsize
            row_major = entry.order == ROW_MAJOR
            table[slot] = (first, entry.cols, 1) if row_major else (first, 1, entry.rows)
        return table

    def block(self, slot: int) -> np.ndarray:
        """Block ``slot`` as the matrix has it (a transposed view if stored column-major)."""
        entry = self.entries[slot]
        dtype = dtypes.by_name(entry.dtype).numpy
        count = entry.rows * entry.cols
        view = np.frombuffer(self.data, dtype=dtype, count=count, offset=entry.offset)
        if entry.order == COLUMN_MAJOR:
            return view.reshape(entry.cols, entry.rows).T
        return view.reshape(entry.rows, entry.cols)

    def run(self, slots: range, order: int) -> np.ndarray | None:
        """The blocks ``slots`` as one zero-copy (total, width) array, or None if they do not
        lie back to back in ``order``, with one dtype and one width.

        Row-major blocks stack their rows; column-major ones stack their columns, so the result
        is the transpose of the blocks placed side by side.
        """
        entries = self.entries[slots.start : slots.stop]
        if len(entries) != len(slots) or not entries:
            return None
        first = entries[0]
        width = first.cols if order == ROW_MAJOR else first.rows
        end = first.offset
        for entry in entries:
            same_width = (entry.cols if order == ROW_MAJOR else entry.rows) == width
            if entry.order != order or entry.dtype != first.dtype or not same_width:
                return None
            if entry.offset != end:
                return None
            end += entry.nbytes
        dtype = dtypes.by_name(first.dtype).numpy
        view = np.frombuffer(
            self.data,
            dtype=dtype,
            count=(end - first.offset) // dtype.itemsize,
            offset=first.offset,
        )
        return view.reshape(-1, width)

    def block_bytes(self, slot: int) -> memoryview:
        """The block's bytes as stored (see ``order``)."""
        entry = self.entries[slot]
        return memoryview(self.data)[entry.offset : entry.offset + entry.nbytes]

    def block_content(self, slot: int) -> bytes | memoryview:
        """The block's bytes in row-major order, whatever its storage order: what digests and
        duplicate checks compare."""
        if self.entries[slot].order == ROW_MAJOR:
            return self.block_bytes(slot)
        return np.ascontiguousarray(self.block(slot)).tobytes()


def parse_page(data: bytes, expected_page_id: int, where: str) -> Page:
    """Verify magic, version, checksum and page id, then decode the directory.

    ``where`` names the file and offset for error messages, so a corrupt page can be found.
    """
    name = f"page {expected_page_id} in {where}"
    if len(data) < HEADER.size:
        raise CorruptPageError(
            f"{name} is truncated: {len(data)} bytes, shorter than the page header"
        )
    magic, checksum, version, _flags, count, page_id, length, directory = HEADER.unpack_from(
        data, 0
    )
    if magic != MAGIC:
        raise CorruptPageError(f"{name} has no page header (bad magic)")
    if length != len(data):
        raise CorruptPageError(f"{name} is damaged: header says {length} bytes, read {len(data)}")
    actual = crc32(memoryview(data)[12:])
    if actual != checksum:
        raise CorruptPageError(
            f"{name} failed its checksum (stored {checksum:#010x}, computed {actual:#010x}); "
            "the page file is corrupt, restore the database from a backup"
        )
    if version not in READABLE_VERSIONS:
        raise FormatVersionError(
            f"{name} has page format {version}; this weightdb reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade weightdb"
        )
    if page_id != expected_page_id:
        raise CorruptPageError(
            f"{where} holds page {page_id} where the catalog expects page {expected_page_id}"
        )
    entries = []
    for slot in range(count):
        if version >= 3:
            entries.append(_entry(ENTRY.unpack_from(data, directory + slot * ENTRY.size)))
            continue
        fields = RAW_ENTRY.unpack_from(data, directory + slot * RAW_ENTRY.size)
        entries.append(_entry((*fields, RAW, fields[1], fields[2], 0)))
    return Page(data, entries, page_id)
