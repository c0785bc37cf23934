"""Replacement policies, selectable by name."""

from weightdb.storage.policies.base import PageModels, ReplacementPolicy
from weightdb.storage.policies.lru import LRUPolicy

POLICIES: dict[str, type[ReplacementPolicy]] = {"lru": LRUPolicy}


def make_policy(name: str, page_models: PageModels | None = None) -> ReplacementPolicy:
    """Build the policy called ``name``; sharing-aware policies use ``page_models``."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown replacement policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    return cls()
