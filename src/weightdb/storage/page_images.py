"""Decoding coded pages into their images, the read path of the lossless tier.

A page's image lays every block at the offset a raw page would give it (``page_format``), so
``Page.block``, ``run`` and ``block_content`` read an image as they read a raw page, panels
included. The buffer pool decodes on a miss and holds images only: an encoded page is a read
buffer, dropped once decoded. A delta's base is never itself a delta, so a read decodes at most
twice: the page, and no further than the base's page, which is raw or plane-coded.
"""

from collections.abc import Callable

import numpy as np

from weightdb.storage import codecs, dtypes
from weightdb.storage.page_format import BlockEntry, Page

BaseBytes = Callable[[BlockEntry], np.ndarray]
"""The base block of a delta entry, its bytes as flat uint8 in the entry's storage order."""


def decode_page(page: Page, base_bytes: BaseBytes) -> Page:
    """The image of a page read from disk (the page itself when it holds no coded block)."""
    if not page.coded:
        return page
    image = bytearray(page.image_nbytes)
    for slot, entry in enumerate(page.entries):
        decode_into(
            page, slot, np.frombuffer(image, np.uint8, entry.nbytes, entry.offset), base_bytes
        )
    return Page(memoryview(image).toreadonly(), page.entries, page.page_id)


def decode_into(page: Page, slot: int, out: np.ndarray, base_bytes: BaseBytes) -> None:
    """Block ``slot`` of a page as read from disk, decoded into ``out`` (flat uint8)."""
    entry = page.entries[slot]
    stored = page.stored(slot)
    if not entry.coded:
        out[:] = np.frombuffer(stored, np.uint8)
        return
    itemsize = dtypes.by_name(entry.dtype).itemsize
    base = base_bytes(entry) if entry.codec == codecs.XOR_PLANES else None
    codecs.decode(stored, out, itemsize, base)


def block_content(page: Page, slot: int, base_bytes: BaseBytes) -> bytes | memoryview:
    """Block ``slot``'s row-major bytes, decoding it if it is coded (digests cover these)."""
    if not page.entries[slot].coded:
        return page.block_content(slot)
    entry = page.entries[slot]
    out = np.empty(entry.nbytes, np.uint8)
    decode_into(page, slot, out, base_bytes)
    single = Page(out.data, [_alone(entry)], page.page_id)
    return single.block_content(0)


def _alone(entry: BlockEntry) -> BlockEntry:
    """The entry of a block decoded into a buffer of its own."""
    return BlockEntry(
        entry.block_id, 0, entry.nbytes, entry.rows, entry.cols, entry.dtype, entry.order
    )
