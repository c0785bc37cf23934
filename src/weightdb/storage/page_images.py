"""Decoding coded pages into their images, the read path of the lossless tier.

A page's image lays every block at the offset a raw page would give it (``page_format``), so
``Page.block``, ``run`` and ``block_content`` read an image as they read a raw page, panels
included. The buffer pool decodes on a miss and holds images only: an encoded page is a read
buffer, dropped once decoded. A delta's base is never itself a delta, so a read decodes at most
twice: the page, and no further than the base's page, which is raw or plane-coded.
"""

from collections.abc import Callable, Mapping

import numpy as np

from weightdb.storage import codecs, dtypes
from weightdb.storage.page_format import BlockEntry, Page

Bases = Callable[[list[BlockEntry]], Mapping[tuple[int, int], np.ndarray]]
"""The bases of the delta entries among some entries, by (base block id, storage order): each
one's bytes laid out in that order, flat uint8 (``BufferPool.bases``, one catalog query)."""


def decode_page(page: Page, bases: Bases) -> Page:
    """The image of a page read from disk (the page itself when it holds no coded block)."""
    if not page.coded:
        return page
    image = np.empty(page.image_nbytes, np.uint8)  # every block's bytes are written below
    found = bases(page.entries)
    for slot, entry in enumerate(page.entries):
        decode_into(page, slot, image[entry.offset : entry.offset + entry.nbytes], found)
    return Page(memoryview(image).toreadonly(), page.entries, page.page_id, image=True)


def decode_into(
    page: Page, slot: int, out: np.ndarray, bases: Mapping[tuple[int, int], np.ndarray]
) -> None:
    """Block ``slot`` of a page as read from disk, decoded into ``out`` (flat uint8)."""
    entry = page.entries[slot]
    stored = page.stored(slot)
    if not entry.coded:
        out[:] = np.frombuffer(stored, np.uint8)
        return
    itemsize = dtypes.by_name(entry.dtype).itemsize
    base = bases[entry.base, entry.order] if entry.codec in codecs.DELTAS else None
    codecs.decode(stored, out, itemsize, base, entry.codec)


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
