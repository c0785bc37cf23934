"""Block codecs: every dtype round-trips bit-exact through the codecs written now, and pages
written by the old code path (codecs 1 and 2, one zstd plane per byte) still decode."""

import struct

import ml_dtypes
import numpy as np
import pytest
import zstandard
from fine_tunes import EVERY_DTYPE, base_and_tuned

from weightdb.errors import FormatVersionError
from weightdb.storage import codecs
from weightdb.storage.page_format import COLUMN_MAJOR, PageBuilder, parse_page
from weightdb.storage.page_images import decode_page


def bytes_of(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(np.uint8).reshape(-1)


def old_encode(data: np.ndarray, itemsize: int, base: np.ndarray | None = None) -> bytes:
    """A block as the old code path (before codecs 3 and 4) wrote it: XOR with the base, one
    plane per byte, each plane zstd-3 unless that saves less than 10% (then stored, flagged)."""
    if base is not None:
        data = data ^ base
    compressor = zstandard.ZstdCompressor(level=3)
    header, body = [], []
    for plane in np.ascontiguousarray(data.reshape(-1, itemsize).T):
        packed = compressor.compress(plane.tobytes())
        if len(packed) <= len(plane) * 0.9:
            header.append(len(packed))
            body.append(packed)
        else:
            header.append(len(plane) | 1 << 31)
            body.append(plane.tobytes())
    return struct.pack(f"<{itemsize}I", *header) + b"".join(body)


@pytest.mark.parametrize("count", [1, 7, 4096])
@pytest.mark.parametrize("dtype", EVERY_DTYPE, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_bit_exact_with_and_without_a_base(dtype, count):
    rng = np.random.default_rng(count)
    base, tuned = base_and_tuned(rng, dtype, count)
    data, against = bytes_of(tuned), bytes_of(base)
    itemsize = np.dtype(dtype).itemsize
    for reference in (against, None):
        encoded = codecs.encode(data, itemsize, reference)
        out = np.empty(data.nbytes, np.uint8)
        codecs.decode(encoded, out, itemsize, reference)
        assert out.tobytes() == data.tobytes()


def test_four_byte_elements_are_coded_as_a_two_byte_group_and_two_planes():
    rng = np.random.default_rng(5)
    base, tuned = base_and_tuned(rng, np.float32, 1000)
    data = bytes_of(tuned)
    encoded = codecs.encode(data, 4, bytes_of(base))
    lengths = struct.unpack_from("<3I", encoded)
    decompress = zstandard.ZstdDecompressor().decompress
    groups, start = [], 12
    for length in lengths:
        size = length & ~codecs.STORED
        piece = encoded[start : start + size]
        groups.append(piece if length & codecs.STORED else decompress(piece))
        start += size
    assert start == len(encoded)
    sizes = codecs.group_sizes(encoded, data.nbytes, 4, codecs.XOR_PLANES)
    assert sizes == [
        (w * 1000, n & ~codecs.STORED) for w, n in zip((2, 1, 1), lengths, strict=True)
    ]
    delta = (data ^ bytes_of(base)).reshape(-1, 4)
    assert [bytes(g) for g in groups] == [
        delta[:, k:j].tobytes() for k, j in ((0, 2), (2, 3), (3, 4))
    ]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.float64])
def test_a_page_written_by_the_old_code_path_decodes_bit_exact(dtype):
    rng = np.random.default_rng(2)
    base, tuned = (a.reshape(48, 40) for a in base_and_tuned(rng, dtype, 48 * 40))
    itemsize = np.dtype(dtype).itemsize
    # the base stored plane-coded (codec 1), the fine-tune as a delta against it (codec 2),
    # column-major as a Gemm weight's blocks are
    laid_out = {1: bytes_of(base.T), 2: bytes_of(tuned.T)}
    builder = PageBuilder(32 * 1024)
    for block_id, codec, against in ((1, codecs.PLANES_V1, None), (2, codecs.XOR_PLANES_V1, 1)):
        reference = None if against is None else laid_out[against]
        encoded = old_encode(laid_out[block_id], itemsize, reference)
        builder.reserve(len(laid_out[block_id]))[: len(encoded)] = encoded
        name = np.dtype(dtype).name
        builder.commit(
            block_id, name, 48, 40, base.nbytes, COLUMN_MAJOR, codec, len(encoded), against or 0
        )
    pieces, _, _ = builder.build(9)
    page = parse_page(b"".join(bytes(p) for p in pieces), 9, "test")
    assert page.coded and [e.codec for e in page.entries] == [1, 2]

    def bases(entries):
        return {(e.base, e.order): laid_out[e.base] for e in entries if e.base}

    image = decode_page(page, bases)
    for slot, block in enumerate((base, tuned)):
        assert np.ascontiguousarray(image.block(slot)).tobytes() == block.tobytes()
        assert image.block_content(slot) == block.tobytes()


def test_a_codec_newer_than_this_weightdb_is_refused_not_misread():
    data = bytes_of(np.arange(64, dtype=np.float32))
    encoded = codecs.encode(data, 4)
    with pytest.raises(FormatVersionError, match=r"codec 9.*upgrade weightdb"):
        codecs.decode(encoded, np.empty_like(data), 4, codec=9)
