"""Lossless block codecs: byte planes plus zstd, optionally after XOR with a base block.

A fine-tune keeps most of its base's sign, exponent and high mantissa bits. XOR against the
base block at the same tensor position turns those into zero bits, and splitting the bytes
into planes (byte k of every element together) gathers the zeros so zstd removes them
(ZipLLM's BitX). Without a base the exponent plane alone still compresses (ZipNN).

An encoded block is one little-endian u32 length per byte group, then the groups. A group is
one byte plane, except that the two low bytes of a 4-byte element form one group of 2-byte
units: both are noise where an element changed and zero where it did not, so one zstd stream
codes them as small as two, and decoding lays out three groups with integer arithmetic
instead of four planes with numpy's strided byte copies, four times faster. A length with
``STORED`` set is a group kept as is, because zstd shrinks it by less than
``GROUP_MIN_SAVING`` (the low mantissa bytes of a block without a base are noise): decoding
copies it instead of running zstd, which keeps decoding fast for a few bytes of saving.

Codecs 1 and 2, written before the grouping, split every byte into a plane of its own; they
stay readable (``decode`` takes the codec), and so do codecs 3 and 4, one encoding per block.

New blocks are written as codecs 5 and 6 (``FRAMED``): the coded blocks of one codec and
itemsize on a page form one *stream*, the encoding above of their bytes laid end to end (each
XORed with its base first, if a delta), so a page decodes with one zstd frame per byte group and
one interleaving pass instead of one per block: on blocks of a few KiB the calls into zstd and
numpy, not the bytes, were the cost (decoding ran at 0.1-0.2 GB/s). ``page_format`` writes and
finds the streams.
"""

import functools
import struct
import threading
from concurrent.futures import Executor

import numpy as np
import zstandard

from weightdb.errors import FormatVersionError

RAW, PLANES_V1, XOR_PLANES_V1, PLANES, XOR_PLANES, PAGE_PLANES, PAGE_XOR_PLANES = range(7)
"""Codec codes as the page directory and the catalog store them: append only, never
renumber. Codes 1-4 are only read."""
NAMES = {
    RAW: "raw",
    PLANES_V1: "planes+zstd v1",
    XOR_PLANES_V1: "xor+planes+zstd v1",
    PLANES: "planes+zstd v2",
    XOR_PLANES: "xor+planes+zstd v2",
    PAGE_PLANES: "planes+zstd",
    PAGE_XOR_PLANES: "xor+planes+zstd",
}
DELTAS = frozenset({XOR_PLANES_V1, XOR_PLANES, PAGE_XOR_PLANES})
"""The codecs that code a block against a base block."""
FRAMED = frozenset({PAGE_PLANES, PAGE_XOR_PLANES})
"""The codecs whose blocks are coded together, one stream per codec, itemsize and page."""
LEVEL = 1
"""zstd's level 1 takes fewer short matches in the noisy mantissa planes than level 3: they
code larger than the literals they replace and decode slowly (on minilm-finetunes the
low-byte planes decode 1.8x faster and the databases are 1-3% smaller)."""
MIN_SAVING = 0.05
"""A coded block is kept only if it is at least this fraction smaller than the raw block:
below that, decoding costs more than the bytes are worth."""
STORED = 1 << 31
LITTLE_U16, LITTLE_U32 = np.dtype("<u2"), np.dtype("<u4")  # blocks are stored little-endian
UNITS = {1: np.dtype(np.uint8), 2: LITTLE_U16, 4: LITTLE_U32}
GROUP_MIN_SAVING = 0.1
ARITHMETIC_FROM = 2048
"""Elements of a block from which ``_interleave`` lays out bytes with integer arithmetic
(measured: below, the strided copies' fewer numpy calls cost less)."""
GROUP_WIDTHS = {4: (2, 1, 1)}
"""Bytes per group, low byte first, by itemsize; other itemsizes have one byte per group. A
group starts at a multiple of its width, so it is a column of units of that width."""

_local = threading.local()


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """zstd contexts are not thread-safe; each thread keeps its own pair."""
    if not hasattr(_local, "contexts"):
        _local.contexts = (zstandard.ZstdCompressor(level=LEVEL), zstandard.ZstdDecompressor())
    return _local.contexts


@functools.cache
def _layout(codec: int, itemsize: int) -> tuple[tuple[int, ...], struct.Struct]:
    """The widths of the byte groups a block of ``codec`` is split into (low byte first), and
    the struct of its header."""
    if codec in (PLANES_V1, XOR_PLANES_V1):
        widths = (1,) * itemsize
    elif codec in (PLANES, XOR_PLANES, PAGE_PLANES, PAGE_XOR_PLANES):
        widths = GROUP_WIDTHS.get(itemsize, (1,) * itemsize)
    else:
        raise FormatVersionError(
            f"a block is coded with codec {codec}, which this weightdb cannot decode; "
            "upgrade weightdb to read this database"
        )
    return widths, struct.Struct(f"<{len(widths)}I")


def _groups(data: np.ndarray, itemsize: int) -> list[np.ndarray]:
    """The byte groups, as written now, of a flat uint8 array of ``itemsize``-byte elements
    (each contiguous, flat uint8)."""
    elements = data.reshape(-1, itemsize)
    groups, start = [], 0
    for width in _layout(PLANES, itemsize)[0]:
        groups.append(np.ascontiguousarray(elements[:, start : start + width]).reshape(-1))
        start += width
    return groups


def encode(data: np.ndarray, itemsize: int, base: np.ndarray | None = None) -> bytes:
    """Code a block's bytes (flat uint8, as stored); XOR with ``base`` (same layout) first."""
    if base is not None:
        data = np.bitwise_xor(data, base)
    compress = _contexts()[0].compress
    header, body = [], []
    for group in _groups(data, itemsize):
        packed = compress(group.data)
        if len(packed) <= len(group) * (1 - GROUP_MIN_SAVING):
            header.append(len(packed))
            body.append(packed)
        else:
            header.append(len(group) | STORED)
            body.append(group.tobytes())
    return _layout(PLANES, itemsize)[1].pack(*header) + b"".join(body)


def encode_stream(blocks: list[tuple[np.ndarray, np.ndarray | None]], itemsize: int) -> bytes:
    """The stream of a page's ``FRAMED`` blocks of one codec and itemsize, given as (bytes, base or
    None) in slot order: their bytes, each XORed with its base, laid end to end and coded as
    one. ``decode`` into one buffer of them all gives them back, XORed."""
    parts = [data if base is None else np.bitwise_xor(data, base) for data, base in blocks]
    return encode(np.concatenate(parts), itemsize)


def decode(
    encoded: bytes | memoryview,
    out: np.ndarray,
    itemsize: int,
    base: np.ndarray | None = None,
    codec: int = PLANES,
    threads: Executor | None = None,
) -> None:
    """Decode into ``out`` (flat uint8, the block's bytes as stored), then XOR ``base``;
    ``codec`` says how the block was split (the V1 codecs: one plane per byte). With
    ``threads``, the groups decompress side by side on them (zstd releases the GIL) when more
    than one is compressed; the bytes do not depend on it."""
    widths, header = _layout(codec, itemsize)
    count = len(out) // itemsize
    pieces, start = [], header.size
    for width, length in zip(widths, header.unpack_from(encoded), strict=True):
        size = length & ~STORED
        pieces.append((encoded[start : start + size], count * width, bool(length & STORED)))
        start += size
    side_by_side = threads is not None and sum(not stored for *_, stored in pieces) > 1
    groups = list(threads.map(_group, pieces) if side_by_side else map(_group, pieces))
    _interleave(groups, widths, out)
    if base is not None:
        np.bitwise_xor(out, base, out=out)


def _group(piece: tuple[bytes | memoryview, int, bool]) -> np.ndarray:
    """One byte group's bytes (flat uint8) from its piece of an encoding, its raw size and
    whether it is stored as is."""
    data, nbytes, stored = piece
    group = data if stored else _contexts()[1].decompress(data, max_output_size=nbytes)
    return np.frombuffer(group, np.uint8, nbytes)


def group_sizes(
    encoded: bytes | memoryview, nbytes: int, itemsize: int, codec: int
) -> list[tuple[int, int]]:
    """(raw bytes, stored bytes) of each byte group of a coded block of ``nbytes``, low byte
    first: where a coded block's bytes go (the storage_tiers benchmark reports them)."""
    widths, header = _layout(codec, itemsize)
    count = nbytes // itemsize
    lengths = header.unpack_from(encoded)
    return [(count * w, n & ~STORED) for w, n in zip(widths, lengths, strict=True)]


def _interleave(groups: list[np.ndarray], widths: tuple[int, ...], out: np.ndarray) -> None:
    """Lay the groups' bytes side by side in each element of ``out``. From ARITHMETIC_FROM
    elements on, two one-byte planes combine as uint16 arithmetic, and a 2-byte group with two
    planes as uint32 arithmetic, several times faster than numpy's strided byte copies (the
    general case, which makes fewer calls and so wins on small blocks)."""
    arithmetic = len(groups[-1]) >= ARITHMETIC_FROM  # the last group: a byte per element
    if arithmetic and widths == (1, 1):
        _pair(groups[0], groups[1], out.view(LITTLE_U16))
    elif arithmetic and widths == (2, 1, 1):
        high = np.empty(len(groups[1]), LITTLE_U16)
        _pair(groups[1], groups[2], high)
        words = out.view(LITTLE_U32)
        np.copyto(words, high)
        words <<= 16
        words |= groups[0].view(LITTLE_U16)
    else:  # each group as one strided copy of units of its width
        start = 0
        for width, group in zip(widths, groups, strict=True):
            units = UNITS[width]
            elements = out.view(units).reshape(-1, len(out) // len(group))
            elements[:, start // width] = group.view(units)
            start += width


def _pair(low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
    """``out`` (uint16) = ``high`` << 8 | ``low`` from two byte planes: a widening copy and two
    in-place operations, numpy's fastest loops."""
    np.copyto(out, high)
    out <<= 8
    out |= low


def choose(data: np.ndarray, itemsize: int, base: np.ndarray | None) -> int:
    """The codec to store the block with: a delta against ``base`` if coding it alone saves
    ``MIN_SAVING``, else byte planes alone if they do (the base is unrelated), else raw. The
    block is then coded in its page's stream (``FRAMED``), measured here on its own."""
    limit = len(data) * (1 - MIN_SAVING)
    candidates = ([(PAGE_XOR_PLANES, base)] if base is not None else []) + [(PAGE_PLANES, None)]
    for codec, against in candidates:
        if len(encode(data, itemsize, against)) <= limit:
            return codec
    return RAW
