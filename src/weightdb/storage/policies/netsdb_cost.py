"""The netsDB rule: pages of shared sets are expensive to evict, private pages are cheap.

A page referenced by more than one model costs 1 to evict, any other page 0; the cheapest page
goes first and LRU decides among pages of equal cost. This is the reference system's policy
(netsDB, VLDB 2022), kept as the baseline our own sharing-aware policy must beat.
"""

from weightdb.storage.policies.base import PageModels
from weightdb.storage.policies.ranked import RankedPolicy


class NetsDBCostPolicy(RankedPolicy):
    name = "netsdb-cost"

    def __init__(self, page_models: PageModels) -> None:
        super().__init__()
        self._page_models = page_models
        self._cost: dict[int, int] = {}

    def _key(self, page_id: int) -> tuple[int, int]:
        if page_id not in self._cost:
            self._cost[page_id] = int(len(set(self._page_models(page_id))) > 1)
        return self._cost[page_id], self._last_request.get(page_id, 0)
