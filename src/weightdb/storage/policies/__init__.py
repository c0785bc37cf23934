"""Replacement policies, selectable by name; ``expected-reread`` (once ``weightdb``) is the
default."""

from collections.abc import Callable

from weightdb.errors import WeightDBError
from weightdb.registry import Registry
from weightdb.storage.policies.base import PageModels, ReplacementPolicy
from weightdb.storage.policies.expected_reread import ExpectedRereadPolicy
from weightdb.storage.policies.lfu import LFUPolicy
from weightdb.storage.policies.lru import LRUPolicy
from weightdb.storage.policies.mru import MRUPolicy
from weightdb.storage.policies.netsdb_cost import NetsDBCostPolicy

POLICIES: Registry[Callable[[PageModels], ReplacementPolicy]] = Registry(
    {
        "lru": lambda _: LRUPolicy(),
        "mru": lambda _: MRUPolicy(),
        "lfu": lambda _: LFUPolicy(),
        "netsdb-cost": NetsDBCostPolicy,
        "expected-reread": ExpectedRereadPolicy,
    },
    aliases={"weightdb": "expected-reread"},
)
"""Policy name -> factory taking the page -> models lookup (ignored by policies blind to it);
``weightdb``, the name older config.toml files give, stands for ``expected-reread``."""
DEFAULT_POLICY = "expected-reread"


def _no_models(page_id: int) -> tuple[str, ...]:
    return ()


def make_policy(name: str, page_models: PageModels | None = None) -> ReplacementPolicy:
    """Build the policy called ``name``; sharing-aware policies use ``page_models``.

    Without ``page_models`` every page looks private to netsdb-cost, which degrades to LRU, and
    expected-reread learns sharing only from the requests it sees; a pool that knows the
    catalog should always pass it.
    """
    try:
        factory = POLICIES[name]
    except KeyError:
        raise WeightDBError(
            f"unknown replacement policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    return factory(page_models or _no_models)
