"""Block codecs: every dtype round-trips bit-exact through the codecs written now (a page's
coded blocks as streams), and pages written by the old code paths (codecs 1 and 2, one zstd
plane per byte; codecs 3 and 4, one encoding per block) still decode."""

import struct

import ml_dtypes
import numpy as np
import pytest
import zstandard
from fine_tunes import EVERY_DTYPE, base_and_tuned

from weightdb.errors import FormatVersionError
from weightdb.storage import codecs, page_images
from weightdb.storage.page_format import COLUMN_MAJOR, ROW_MAJOR, PageBuilder, parse_page
from weightdb.storage.page_images import block_content, decode_page


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


OLD_PATHS = {
    "codecs 1 and 2": (codecs.PLANES_V1, codecs.XOR_PLANES_V1, old_encode),
    "codecs 3 and 4": (codecs.PLANES, codecs.XOR_PLANES, codecs.encode),
}


@pytest.mark.parametrize("path", OLD_PATHS)
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.float64])
def test_a_page_written_by_an_old_code_path_decodes_bit_exact(dtype, path):
    rng = np.random.default_rng(2)
    base, tuned = (a.reshape(48, 40) for a in base_and_tuned(rng, dtype, 48 * 40))
    itemsize = np.dtype(dtype).itemsize
    alone, delta, encode = OLD_PATHS[path]
    # the base stored plane-coded, the fine-tune as a delta against it, column-major as a
    # Gemm weight's blocks are, each block coded on its own
    laid_out = {1: bytes_of(base.T), 2: bytes_of(tuned.T)}
    builder = PageBuilder(32 * 1024)
    for block_id, codec, against in ((1, alone, None), (2, delta, 1)):
        reference = None if against is None else laid_out[against]
        encoded = encode(laid_out[block_id], itemsize, reference)
        builder.reserve(len(laid_out[block_id]))[: len(encoded)] = encoded
        name = np.dtype(dtype).name
        builder.commit(
            block_id, name, 48, 40, base.nbytes, COLUMN_MAJOR, codec, len(encoded), against or 0
        )
    pieces, _, _ = builder.build(9)
    page = parse_page(b"".join(bytes(p) for p in pieces), 9, "test")
    assert page.coded and [e.codec for e in page.entries] == [alone, delta]

    def bases(entries):
        return {(e.base, e.order): laid_out[e.base] for e in entries if e.base}

    image = decode_page(page, bases)
    for slot, block in enumerate((base, tuned)):
        assert np.ascontiguousarray(image.block(slot)).tobytes() == block.tobytes()
        assert image.block_content(slot) == block.tobytes()
        assert block_content(page, slot, bases) == block.tobytes()


DECODING = {
    "one thread": {},
    "groups on threads": {"PARALLEL_FROM": 0},
    "bases XORed block by block": {"GATHER_BELOW": 0},
}


@pytest.mark.parametrize("decoding", DECODING)
@pytest.mark.parametrize("dtype", EVERY_DTYPE, ids=lambda d: np.dtype(d).name)
def test_a_pages_coded_blocks_are_coded_as_streams_and_decode_bit_exact(
    dtype, decoding, monkeypatch
):
    """Raw blocks, blocks coded alone and deltas of two itemsizes, in both storage orders and
    of several sizes, interleaved on one page: each codec and itemsize is one stream after the
    raw blocks, and the image (however decoded), every block read alone and the catalog's
    shares agree."""
    for name, value in DECODING[decoding].items():
        monkeypatch.setattr(page_images, name, value)
    rng = np.random.default_rng(4)
    other = np.float32 if np.dtype(dtype).itemsize != 4 else ml_dtypes.bfloat16
    blocks, laid_out = {}, {}  # block id -> (array, order, codec, base id)
    plan = [
        (dtype, (32, 24), ROW_MAJOR, codecs.PAGE_PLANES, None),
        (dtype, (32, 24), COLUMN_MAJOR, codecs.PAGE_XOR_PLANES, 100),
        (other, (8, 5), ROW_MAJOR, codecs.RAW, None),
        (dtype, (7, 3), ROW_MAJOR, codecs.PAGE_XOR_PLANES, 101),
        (other, (16, 16), COLUMN_MAJOR, codecs.PAGE_XOR_PLANES, 102),
        (dtype, (32, 24), ROW_MAJOR, codecs.PAGE_XOR_PLANES, 103),
        (other, (16, 16), ROW_MAJOR, codecs.PAGE_PLANES, None),
    ]
    builder = PageBuilder(64 * 1024)
    for block_id, (kind, shape, order, codec, base_id) in enumerate(plan, 1):
        base, tuned = base_and_tuned(rng, kind, shape)
        stored = tuned.T if order == COLUMN_MAJOR else tuned
        laid_out[base_id] = bytes_of(base.T if order == COLUMN_MAJOR else base)
        np.copyto(np.frombuffer(builder.reserve(tuned.nbytes), kind).reshape(stored.shape), stored)
        against = laid_out[base_id] if base_id else None
        name = np.dtype(kind).name
        builder.commit(
            block_id, name, *shape, tuned.nbytes, order, codec, None, base_id or 0, against
        )
        blocks[block_id] = tuned
    before = builder.page(5)  # as the open page reads: every block raw
    assert not before.coded
    assert [before.block_content(s) for s in range(len(plan))] == [
        np.ascontiguousarray(b).tobytes() for b in blocks.values()
    ]
    pieces, length, _ = builder.build(5)
    codings = builder.codings()
    page = parse_page(b"".join(bytes(p) for p in pieces), 5, "test")
    assert length == page.nbytes
    streams = {}
    for entry in page.entries:
        if entry.coded:
            streams.setdefault((entry.stored_offset, entry.stored_nbytes), set()).add(
                (entry.codec, np.dtype(entry.dtype).itemsize)
            )
    assert len(streams) == len({(c, np.dtype(p[0]).itemsize) for p in plan if (c := p[3])})
    assert all(len(kinds) == 1 for kinds in streams.values())
    raw_entry = page.entries[2]
    assert raw_entry.stored_offset + raw_entry.stored_nbytes <= min(o for o, _ in streams)
    assert sum(share for *_, share in codings) == sum(n for _, n in streams)
    assert [(c[0], c[1], c[2]) for c in codings] == [
        (block_id, p[3], p[4]) for block_id, p in enumerate(plan, 1) if p[3]
    ]

    def bases(entries):
        return {(e.base, e.order): laid_out[e.base] for e in entries if e.base}

    image = decode_page(page, bases)
    for slot, block in enumerate(blocks.values()):
        assert image.block_content(slot) == np.ascontiguousarray(block).tobytes()
        assert block_content(page, slot, bases) == np.ascontiguousarray(block).tobytes()


def test_a_codec_newer_than_this_weightdb_is_refused_not_misread():
    data = bytes_of(np.arange(64, dtype=np.float32))
    encoded = codecs.encode(data, 4)
    with pytest.raises(FormatVersionError, match=r"codec 9.*upgrade weightdb"):
        codecs.decode(encoded, np.empty_like(data), 4, codec=9)
