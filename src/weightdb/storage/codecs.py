"""Lossless block codecs: byte planes plus zstd, optionally after XOR with a base block.

A fine-tune keeps most of its base's sign, exponent and high mantissa bits. XOR against the
base block at the same tensor position turns those into zero bits, and splitting the bytes
into planes (byte k of every element together) gathers the zeros so zstd removes them
(ZipLLM's BitX). Without a base the exponent plane alone still compresses (ZipNN).

An encoded block is ``itemsize`` little-endian u32 plane lengths, then the planes. A length
with ``STORED`` set is a plane kept as is, because zstd shrinks it by less than
``PLANE_MIN_SAVING`` (the low mantissa bytes are noise): decoding copies it instead of running
zstd, which keeps decoding fast for a few bytes of saving.
"""

import struct
import threading

import numpy as np
import zstandard

RAW, PLANES, XOR_PLANES = 0, 1, 2
"""Codec codes as the page directory stores them: append only, never renumber."""
NAMES = {RAW: "raw", PLANES: "planes+zstd", XOR_PLANES: "xor+planes+zstd"}
LEVEL = 3
MIN_SAVING = 0.05
"""A coded block is kept only if it is at least this fraction smaller than the raw block:
below that, decoding costs more than the bytes are worth."""
STORED = 1 << 31
LITTLE_U16 = np.dtype("<u2")  # plane 0 is the low byte: blocks are stored little-endian
PLANE_MIN_SAVING = 0.1

_local = threading.local()


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """zstd contexts are not thread-safe; each thread keeps its own pair."""
    if not hasattr(_local, "contexts"):
        _local.contexts = (zstandard.ZstdCompressor(level=LEVEL), zstandard.ZstdDecompressor())
    return _local.contexts


def planes(data: np.ndarray, itemsize: int) -> np.ndarray:
    """The (itemsize, n) byte planes of a flat uint8 array of n elements."""
    return np.ascontiguousarray(data.reshape(-1, itemsize).T)


def encode(data: np.ndarray, itemsize: int, base: np.ndarray | None = None) -> bytes:
    """Code a block's bytes (flat uint8, as stored); XOR with ``base`` (same layout) first."""
    if base is not None:
        data = np.bitwise_xor(data, base)
    compress = _contexts()[0].compress
    header, body = [], []
    for plane in planes(data, itemsize):
        packed = compress(plane.data)
        if len(packed) <= len(plane) * (1 - PLANE_MIN_SAVING):
            header.append(len(packed))
            body.append(packed)
        else:
            header.append(len(plane) | STORED)
            body.append(plane.tobytes())
    return struct.pack(f"<{itemsize}I", *header) + b"".join(body)


def decode(
    encoded: bytes | memoryview, out: np.ndarray, itemsize: int, base: np.ndarray | None = None
) -> None:
    """Decode into ``out`` (flat uint8, the block's bytes as stored), then XOR ``base``."""
    decompress = _contexts()[1].decompress
    lengths = struct.unpack_from(f"<{itemsize}I", encoded)
    count = len(out) // itemsize
    start = 4 * itemsize
    planes = []
    for length in lengths:
        size = length & ~STORED
        piece = encoded[start : start + size]
        plane = piece if length & STORED else decompress(piece, max_output_size=count)
        planes.append(np.frombuffer(plane, dtype=np.uint8, count=count))
        start += size
    _interleave(planes, out)
    if base is not None:
        np.bitwise_xor(out, base, out=out)


def _interleave(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Byte k of every element from plane k. Two planes combine as uint16 arithmetic, twice
    as fast as numpy's strided byte copies (which win for four planes)."""
    if len(planes) == 2:
        halves = out.view(LITTLE_U16)
        np.left_shift(planes[1], 8, out=halves, dtype=LITTLE_U16)
        np.bitwise_or(halves, planes[0], out=halves, dtype=LITTLE_U16)
        return
    elements = out.reshape(-1, len(planes))
    for k, plane in enumerate(planes):
        elements[:, k] = plane


def choose(data: np.ndarray, itemsize: int, base: np.ndarray | None) -> tuple[int, bytes | None]:
    """The codec that stores the block in the fewest bytes, and its encoding (None for raw).

    A delta against ``base`` is tried first; byte planes alone only when the delta does not
    save enough (the base is unrelated)."""
    limit = len(data) * (1 - MIN_SAVING)
    candidates = ([(XOR_PLANES, base)] if base is not None else []) + [(PLANES, None)]
    for codec, against in candidates:
        encoded = encode(data, itemsize, against)
        if len(encoded) <= limit:
            return codec, encoded
    return RAW, None
