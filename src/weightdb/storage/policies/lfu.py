"""Least frequently used: evict the page requested the fewest times.

Counts cover the whole run and survive eviction, so a popular page that was pushed out once is
not mistaken for a new one. Ties go to the least recently requested page.
"""

from collections import Counter

from weightdb.storage.policies.ranked import RankedPolicy


class LFUPolicy(RankedPolicy):
    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        self._count: Counter[int] = Counter()

    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        self._count[page_id] += 1
        super().on_request(page_id, model, hit)

    def _key(self, page_id: int) -> tuple[int, int]:
        return self._count[page_id], self._last_request.get(page_id, 0)
