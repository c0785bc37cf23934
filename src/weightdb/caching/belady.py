"""Belady's offline optimum: evict the resident page whose next request is farthest away.

It needs the whole future, so it only runs on a recorded trace, as the ceiling every online
policy is measured against. With equal page sizes it minimises misses; with mixed sizes no
simple rule is optimal and this one is the customary reference.
"""

from weightdb.caching.trace import Trace
from weightdb.storage.policies.ranked import RankedPolicy

_NEVER = float("inf")


class BeladyPolicy(RankedPolicy):
    """Replays ``trace``; the pool must report exactly the trace's requests, in order."""

    name = "opt"

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self._pages = [request.page for request in trace.requests]
        self._next_use = _next_uses(self._pages)
        self._position = 0
        self._page_next: dict[int, float] = {}  # page -> position of its next request

    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        position = self._position
        if position >= len(self._pages) or self._pages[position] != page_id:
            raise ValueError(f"request {position} for page {page_id} is not the trace's request")
        self._page_next[page_id] = self._next_use[position]
        self._position += 1
        super().on_request(page_id, model, hit)

    def _key(self, page_id: int) -> tuple[float, int]:
        # Farthest next use first; among pages never used again, the least recently used.
        return -self._page_next[page_id], self._last_request[page_id]


def _next_uses(pages: list[int]) -> list[float]:
    """For each position, the position of the next request for the same page (inf if none)."""
    following: dict[int, float] = {}
    result = [_NEVER] * len(pages)
    for position in range(len(pages) - 1, -1, -1):
        result[position] = following.get(pages[position], _NEVER)
        following[pages[position]] = position
    return result
