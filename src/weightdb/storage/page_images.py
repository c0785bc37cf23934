"""Decoding coded pages into their images, the read path of the lossless tier.

A page's image lays every block at the offset a raw page would give it (``page_format``), so
``Page.block``, ``run`` and ``block_content`` read an image as they read a raw page, panels
included. The buffer pool decodes on a miss and holds the image (and, once the image is
evicted, the page as read: see ``buffer_pool``). A delta's base is never itself a delta, so
a read decodes at most twice: the page, and no further than the base's page, which is raw or
plane-coded.

A page's coded blocks of one codec and itemsize are one stream (``codecs.FRAMED``): it decodes
in one pass into the image, where such blocks lie back to back, and a large stream's byte groups
decompress side by side on a few threads of this module's own. That is the parallelism the read
path has: pages are pinned one at a time by their readers, so a page's own groups are what is
there to share, and the image does not depend on it.
"""

import functools
import itertools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from weightdb.storage import codecs, dtypes
from weightdb.storage.page_format import BlockEntry, Page

PARALLEL_FROM = 1 << 20
"""Image bytes of a stream from which its groups decompress on several threads: a page of
large blocks takes milliseconds, a handover tens of microseconds."""

GATHER_BELOW = 1 << 15
"""Mean block bytes of a delta stream below which its bases are gathered and XORed in one call:
the calls per block cost more than the copy (blocks of a few KiB), not so above."""

Bases = Callable[[list[BlockEntry]], Mapping[tuple[int, int], np.ndarray]]
"""The bases of the delta entries among some entries, by (base block id, storage order): each
one's bytes laid out in that order, flat uint8 (``BufferPool.bases``, one catalog query)."""


def decode_page(page: Page, bases: Bases) -> Page:
    """The image of a page read from disk (the page itself when it holds no coded block)."""
    if not page.coded:
        return page
    image = np.empty(page.image_nbytes, np.uint8)  # every block's bytes are written below
    found = bases(page.entries)
    streams: dict[int, list[int]] = {}
    for slot, entry in enumerate(page.entries):
        if entry.codec in codecs.FRAMED:
            streams.setdefault(entry.stored_offset, []).append(slot)
        else:
            decode_into(page, slot, image[entry.offset : entry.offset + entry.nbytes], found)
    for slots in streams.values():
        _decode_stream(page, slots, image, found)
    return Page(memoryview(image).toreadonly(), page.entries, page.page_id, image=True)


def _decode_stream(
    page: Page, slots: list[int], image: np.ndarray, bases: Mapping[tuple[int, int], np.ndarray]
) -> None:
    """Decode the stream of blocks ``slots`` into their places in ``image`` (flat uint8, the
    page's image): straight there when they lie back to back in it, as a page's blocks of one
    size do, else through a buffer; the deltas' bases XORed over it in one call when the
    blocks are small (gathered first), else block by block (no copy)."""
    entries = [page.entries[slot] for slot in slots]
    first = entries[0]
    nbytes = sum(entry.nbytes for entry in entries)
    adjacent = all(b.offset == a.offset + a.nbytes for a, b in itertools.pairwise(entries))
    out = image[first.offset : first.offset + nbytes] if adjacent else np.empty(nbytes, np.uint8)
    itemsize = dtypes.by_name(first.dtype).itemsize
    threads = _threads() if nbytes >= PARALLEL_FROM else None
    each = first.codec in codecs.DELTAS  # a stream's blocks share their codec
    gathered = None
    if each and nbytes < GATHER_BELOW * len(entries):
        gathered, each = np.concatenate([bases[e.base, e.order] for e in entries]), False
    codecs.decode(page.stored(slots[0]), out, itemsize, gathered, first.codec, threads)
    if adjacent and not each:
        return
    start = 0
    for entry in entries:
        block = image[entry.offset : entry.offset + entry.nbytes]
        if not adjacent:
            block[:] = out[start : start + entry.nbytes]
        if each:
            np.bitwise_xor(block, bases[entry.base, entry.order], out=block)
        start += entry.nbytes


@functools.cache
def _threads() -> ThreadPoolExecutor | None:
    """The threads a large stream's groups decompress on, one per core this process may run
    on (None on one core)."""
    cores = len(os.sched_getaffinity(0))
    return ThreadPoolExecutor(cores, thread_name_prefix="weightdb-decode") if cores > 1 else None


os.register_at_fork(after_in_child=_threads.cache_clear)  # a child has none of these threads


def decode_into(
    page: Page, slot: int, out: np.ndarray, bases: Mapping[tuple[int, int], np.ndarray]
) -> None:
    """Block ``slot`` of a page as read from disk, decoded into ``out`` (flat uint8); a
    block of a stream costs decoding the whole stream."""
    entry = page.entries[slot]
    stored = page.stored(slot)
    if not entry.coded:
        out[:] = np.frombuffer(stored, np.uint8)
        return
    base = bases[entry.base, entry.order] if entry.codec in codecs.DELTAS else None
    itemsize = dtypes.by_name(entry.dtype).itemsize
    if entry.codec not in codecs.FRAMED:
        codecs.decode(stored, out, itemsize, base, entry.codec)
        return
    stream = [
        other
        for other in page.entries
        if other.codec in codecs.FRAMED and other.stored_offset == entry.stored_offset
    ]
    decoded = np.empty(sum(other.nbytes for other in stream), np.uint8)
    codecs.decode(stored, decoded, itemsize, codec=entry.codec)
    start = sum(other.nbytes for other in stream[: stream.index(entry)])
    out[:] = decoded[start : start + entry.nbytes]
    if base is not None:
        np.bitwise_xor(out, base, out=out)


def block_content(page: Page, slot: int, bases: Bases) -> bytes | memoryview:
    """Block ``slot``'s row-major bytes, decoding it if it is coded (digests cover these)."""
    entry = page.entries[slot]
    if not page.coded:  # an image, or a page of raw blocks: readable as it is
        return page.block_content(slot)
    if entry.coded:
        out = np.empty(entry.nbytes, np.uint8)
        decode_into(page, slot, out, bases([entry]))
        data = out.data
    else:  # a raw block of a page as read from disk lies at its stored offset
        data = page.stored(slot)
    return Page(data, [_alone(entry)], page.page_id).block_content(0)


def _alone(entry: BlockEntry) -> BlockEntry:
    """The entry of a block decoded into a buffer of its own."""
    return BlockEntry(
        entry.block_id, 0, entry.nbytes, entry.rows, entry.cols, entry.dtype, entry.order
    )
