"""The on-disk format of one page: a checksummed header, a block directory, and block bytes.

    offset 0   magic      8 bytes  b"WDBPAGE\\0"
           8   checksum   u32      CRC-32 of every byte from offset 12 to the page's end
          12   version    u16      page format version
          14   flags      u16      reserved, 0
          16   blocks     u32      number of directory entries
          20   page id    u64
          28   length     u64      bytes used by this page (header + directory + data)
          36   reserved   12 bytes
          48   directory  blocks x 48 bytes: block id u64, offset u64, nbytes u64,
                          rows u64, cols u64, dtype u8, 7 reserved bytes
               data       each block's bytes, C order, at a 64-byte aligned offset

Pages are self-describing (a directory entry carries the block's dtype and shape), so a page
can be checked and read without the catalog. The checksum covers the version, so a page of
an unknown version is reported as such, not as corruption.
"""

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from weightdb.errors import CorruptPageError, FormatVersionError
from weightdb.storage import dtypes

MAGIC = b"WDBPAGE\0"
VERSION = 1
HEADER = struct.Struct("<8sIHHIQQ12x")
ENTRY = struct.Struct("<QQQQQB7x")
ALIGN = 64
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


def page_overhead(block_count: int) -> int:
    """Bytes a page spends on its header and directory before the first block."""
    return _align(HEADER.size + ENTRY.size * block_count)


class PageBuilder:
    """Collects blocks for one page until the next one would not fit in ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: list[tuple[int, str, int, int, bytes | memoryview]] = []
        self._data_bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def fits(self, nbytes: int) -> bool:
        return page_overhead(len(self._blocks) + 1) + self._data_bytes + nbytes <= self.capacity

    def add(self, block_id: int, dtype: str, rows: int, cols: int, data: bytes | memoryview) -> int:
        """Append a block and return its slot in the page directory."""
        if not self.fits(len(data)):
            raise ValueError("block does not fit in this page; start a new page")
        self._blocks.append((block_id, dtype, rows, cols, data))
        self._data_bytes += _align(len(data))
        return len(self._blocks) - 1

    def build(self, page_id: int) -> bytes:
        """Serialize the page; its length is a multiple of 64 bytes and at most the capacity."""
        data_start = page_overhead(len(self._blocks))
        buffer = bytearray(data_start + self._data_bytes)
        offset = data_start
        for slot, (block_id, dtype, rows, cols, data) in enumerate(self._blocks):
            ENTRY.pack_into(
                buffer,
                HEADER.size + slot * ENTRY.size,
                block_id,
                offset,
                len(data),
                rows,
                cols,
                _CODE_OF[dtype],
            )
            buffer[offset : offset + len(data)] = data
            offset += _align(len(data))
        HEADER.pack_into(buffer, 0, MAGIC, 0, VERSION, 0, len(self._blocks), page_id, len(buffer))
        struct.pack_into("<I", buffer, 8, zlib.crc32(memoryview(buffer)[12:]))
        return bytes(buffer)


class Page:
    """A verified page in memory; ``block`` returns zero-copy read-only views into it."""

    def __init__(self, data: bytes, entries: list[BlockEntry], page_id: int) -> None:
        self.data = data
        self.entries = entries
        self.page_id = page_id

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def block(self, slot: int) -> np.ndarray:
        entry = self.entries[slot]
        dtype = dtypes.by_name(entry.dtype).numpy
        count = entry.rows * entry.cols
        view = np.frombuffer(self.data, dtype=dtype, count=count, offset=entry.offset)
        return view.reshape(entry.rows, entry.cols)

    def block_bytes(self, slot: int) -> memoryview:
        entry = self.entries[slot]
        return memoryview(self.data)[entry.offset : entry.offset + entry.nbytes]


def parse_page(data: bytes, expected_page_id: int, where: str) -> Page:
    """Verify magic, version, checksum and page id, then decode the directory.

    ``where`` names the file and offset for error messages, so a corrupt page can be found.
    """
    if len(data) < HEADER.size:
        raise CorruptPageError(
            f"page {expected_page_id} in {where} is truncated: {len(data)} bytes, "
            f"shorter than the {HEADER.size}-byte page header"
        )
    magic, checksum, version, _flags, count, page_id, length = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptPageError(f"page {expected_page_id} in {where} has no page header (bad magic)")
    if length != len(data):
        raise CorruptPageError(
            f"page {expected_page_id} in {where} is damaged: header says {length} bytes, "
            f"read {len(data)}"
        )
    actual = zlib.crc32(memoryview(data)[12:])
    if actual != checksum:
        raise CorruptPageError(
            f"page {expected_page_id} in {where} failed its checksum "
            f"(stored {checksum:#010x}, computed {actual:#010x}); the page file is corrupt, "
            "restore the database from a backup"
        )
    if version != VERSION:
        raise FormatVersionError(
            f"page {expected_page_id} in {where} has page format {version}; this weightdb "
            f"reads format {VERSION}: upgrade weightdb"
        )
    if page_id != expected_page_id:
        raise CorruptPageError(
            f"{where} holds page {page_id} where the catalog expects page {expected_page_id}"
        )
    entries = []
    for slot in range(count):
        fields = ENTRY.unpack_from(data, HEADER.size + slot * ENTRY.size)
        block_id, offset, nbytes, rows, cols, code = fields
        entries.append(BlockEntry(block_id, offset, nbytes, rows, cols, DTYPE_CODES[code]))
    return Page(data, entries, page_id)
