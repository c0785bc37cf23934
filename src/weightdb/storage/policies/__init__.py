"""Replacement policies, selectable by name; ``weightdb`` is the default."""

from collections.abc import Callable

from weightdb.errors import WeightDBError
from weightdb.storage.policies.base import PageModels, ReplacementPolicy
from weightdb.storage.policies.lfu import LFUPolicy
from weightdb.storage.policies.lru import LRUPolicy
from weightdb.storage.policies.mru import MRUPolicy
from weightdb.storage.policies.netsdb_cost import NetsDBCostPolicy
from weightdb.storage.policies.weightdb import WeightDBPolicy

POLICIES: dict[str, Callable[[PageModels], ReplacementPolicy]] = {
    "lru": lambda _: LRUPolicy(),
    "mru": lambda _: MRUPolicy(),
    "lfu": lambda _: LFUPolicy(),
    "netsdb-cost": NetsDBCostPolicy,
    "weightdb": WeightDBPolicy,
}
"""Policy name -> factory taking the page -> models lookup (ignored by policies blind to it)."""
DEFAULT_POLICY = "weightdb"


def _no_models(page_id: int) -> tuple[str, ...]:
    return ()


def make_policy(name: str, page_models: PageModels | None = None) -> ReplacementPolicy:
    """Build the policy called ``name``; sharing-aware policies use ``page_models``.

    Without ``page_models`` every page looks private to netsdb-cost, which degrades to LRU, and
    weightdb learns sharing only from the requests it sees; a pool that knows the catalog should
    always pass it.
    """
    try:
        factory = POLICIES[name]
    except KeyError:
        raise WeightDBError(
            f"unknown replacement policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    return factory(page_models or _no_models)
