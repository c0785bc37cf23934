"""The interface between the buffer pool and a replacement policy.

The pool owns frames, pins and the byte budget; a policy only ranks resident pages. The pool
tells the policy about every request (with the model that made it), every page that enters or
leaves the pool, and asks it for a victim among the pages that are not pinned.

Call order for one request: ``on_request`` first, hit or miss, so that a policy has counted the
request before it must choose room for it; on a miss, ``victim`` and ``on_remove`` for each page
evicted until the new page fits; then ``on_insert`` for the new page. ``on_query`` comes before
the requests of each query (one run of a prepared model) when the caller knows where queries
start.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable


class ReplacementPolicy(ABC):
    """Chooses which resident page to evict. Implementations must be deterministic."""

    name: str = "abstract"

    @abstractmethod
    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        """A page was requested (hit or miss), on behalf of ``model`` when known."""

    @abstractmethod
    def on_insert(self, page_id: int, nbytes: int) -> None:
        """A page of ``nbytes`` bytes became resident (after a miss)."""

    @abstractmethod
    def on_remove(self, page_id: int) -> None:
        """A page left the pool (evicted or invalidated)."""

    @abstractmethod
    def victim(self, evictable: Callable[[int], bool]) -> int | None:
        """The resident page to evict next among those ``evictable`` accepts, or None."""

    def on_query(self, model: str) -> None:  # noqa: B027 - most policies ignore queries
        """A query of ``model`` starts: the page requests that follow are made for it."""


PageModels = Callable[[int], Iterable[str]]
"""Which models reference a page: what sharing-aware policies know and others ignore."""
