"""Least recently used: evict the page whose last request is oldest."""

from collections import OrderedDict
from collections.abc import Callable

from weightdb.storage.policies.base import ReplacementPolicy


class LRUPolicy(ReplacementPolicy):
    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()  # oldest first

    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        if page_id in self._order:
            self._order.move_to_end(page_id)

    def on_insert(self, page_id: int, nbytes: int) -> None:
        self._order[page_id] = None

    def on_remove(self, page_id: int) -> None:
        self._order.pop(page_id, None)

    def victim(self, evictable: Callable[[int], bool]) -> int | None:
        return next((page for page in self._order if evictable(page)), None)
