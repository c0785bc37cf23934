"""Policies that evict the resident page with the smallest key, kept in a lazily refreshed heap.

A subclass defines ``_key(page)``. The heap may hold stale keys: an entry is refreshed when it
reaches the top, and only an entry whose stored key is still current is evicted. This is exact
as long as a page's key never shrinks except through a request for that page (which pushes a
fresh entry), so each request and each eviction costs O(log n) instead of a scan of the pool.
"""

from abc import abstractmethod
from collections.abc import Callable
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any

from weightdb.storage.policies.base import ReplacementPolicy


class RankedPolicy(ReplacementPolicy):
    """Evicts the evictable resident page with the smallest ``_key``."""

    def __init__(self) -> None:
        self._clock = 0  # number of requests seen
        self._last_request: dict[int, int] = {}  # page -> clock at its latest request
        self._heap: list[tuple[Any, int, int]] = []  # (key, entry number, page)
        self._live: dict[int, int] = {}  # resident page -> entry number of its current entry
        self._entries = 0

    @abstractmethod
    def _key(self, page_id: int) -> Any:
        """The page's rank now; the smallest is evicted first. Must be totally ordered."""

    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        self._clock += 1
        self._last_request[page_id] = self._clock
        if page_id in self._live:
            self._push(page_id)

    def on_insert(self, page_id: int, nbytes: int) -> None:
        self._push(page_id)

    def on_remove(self, page_id: int) -> None:
        self._live.pop(page_id, None)

    def victim(self, evictable: Callable[[int], bool]) -> int | None:
        skipped = []
        try:
            while self._heap:
                key, entry, page = self._heap[0]
                if self._live.get(page) != entry:
                    heappop(self._heap)
                    continue
                current = self._key(page)
                if current != key:
                    heapreplace(self._heap, (current, entry, page))
                elif evictable(page):
                    return page
                else:
                    skipped.append(heappop(self._heap))
            return None
        finally:
            for item in skipped:
                heappush(self._heap, item)

    def _push(self, page_id: int) -> None:
        self._entries += 1
        self._live[page_id] = self._entries
        heappush(self._heap, (self._key(page_id), self._entries, page_id))
        if len(self._heap) > 4 * len(self._live) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        """Drop stale entries and recompute every key, e.g. after a change of scale."""
        self._heap = [(self._key(page), entry, page) for page, entry in self._live.items()]
        heapify(self._heap)
