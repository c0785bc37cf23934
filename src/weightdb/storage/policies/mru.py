"""Most recently used: evict the page whose last request is newest.

It wins where LRU loses worst: a cyclic scan over more pages than fit, such as one model larger
than the pool, read front to back on every request.
"""

from collections.abc import Callable

from weightdb.storage.policies.lru import LRUPolicy


class MRUPolicy(LRUPolicy):
    name = "mru"

    def victim(self, evictable: Callable[[int], bool]) -> int | None:
        return next((page for page in reversed(self._order) if evictable(page)), None)
