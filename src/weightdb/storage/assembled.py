"""Arrays assembled from resident pages, kept beside them inside the pool's budget.

A panel whose blocks do not lie back to back on one page (a page smaller than the panel, or a
layout packed for other models) must be copied out of its blocks before a product can use it;
on every request that costs a Python step per block. The pool keeps such copies while every
page they came from is resident, in budget room that no page needs: a copy never causes a page
to be evicted, is dropped first when a page needs room, and is dropped with any of its pages.
So which pages are resident, and the bytes read, are exactly what they would be without it.
"""

import mmap
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from math import prod

import numpy as np


def anonymous_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An empty array in a memory mapping of its own. Copies are megabytes each and come and
    go as pages need room; from malloc, freed ones stay in its heap (measured: 120 MiB beyond
    the budget on the budgets family at 10%), while a mapping goes back to the operating
    system when the pool drops the copy, so the process holds what the pool counts."""
    count = prod(shape)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE  # faulted in at once
    buffer = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize), flags=flags)
    return np.frombuffer(buffer, dtype, count=count).reshape(shape)


@dataclass(frozen=True)
class Assembled:
    array: np.ndarray
    pages: frozenset[int]


class AssembledArrays:
    """Kept copies by key, least recently used first; the pool's lock guards every call."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Hashable, Assembled] = OrderedDict()
        self._by_page: dict[int, set[Hashable]] = {}

    def get(self, key: Hashable) -> Assembled | None:
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
        return kept

    def keep(self, key: Hashable, array: np.ndarray, pages: frozenset[int]) -> bool:
        """Keep ``array`` unless a copy under ``key`` is kept already; whether it was kept."""
        if key in self._kept:
            return False
        array.flags.writeable = False
        self._kept[key] = Assembled(array, pages)
        for page_id in pages:
            self._by_page.setdefault(page_id, set()).add(key)
        return True

    def drop_page(self, page_id: int) -> int:
        """Forget every copy made from ``page_id`` (it is leaving the pool); bytes freed."""
        return sum(self._drop(key) for key in self._by_page.pop(page_id, set()))

    def drop_oldest(self) -> int | None:
        """Forget the least recently used copy; bytes freed, or None if none is kept."""
        if not self._kept:
            return None
        return self._drop(next(iter(self._kept)))

    def _drop(self, key: Hashable) -> int:
        kept = self._kept.pop(key, None)
        if kept is None:
            return 0
        for page_id in kept.pages:
            keys = self._by_page.get(page_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_page[page_id]
        return kept.array.nbytes
