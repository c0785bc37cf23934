"""weightdb's own policy: keep the pages that the most requested models need.

Only the database knows which models reference a page, so it can rate a page by the demand of
its models rather than by the page's own, sparse history. A model's rate is its decayed count of
page requests divided by the number of pages it references (one request reads each of its pages
once), and a page's priority is the sum of the rates of its models: the expected number of times
it will be needed per unit of time. Evicting the lowest priority maximises the bytes that hits
save per byte of pool, whatever the page sizes, since both grow with the page's size. A new page
of a popular model is known to be valuable on its first request, and a small prior per model
makes shared pages rank high before any rate is known. Models seen requesting a page count as
referencing it, so sharing the catalog lookup does not report is learnt from the requests.

The decay (a half-life of some hundreds of passes over the pages seen so far) lets the ranking
follow a shift in popularity. Ties, the rule among pages of one sharing set, go to the most
recently requested page: in a model's front-to-back read that page is needed last next time, and
the pool keeps hitting part of a set larger than it can hold instead of cycling through all of
it like LRU.
"""

import math
from collections import Counter

from weightdb.storage.policies.base import PageModels
from weightdb.storage.policies.ranked import RankedPolicy

HALF_LIFE_PASSES = 512.0
"""Half-life of a request's weight, in page requests per distinct page seen; tuned on Zipf."""
PRIOR_REQUESTS = 1.0
"""Requests credited to a model when it is first seen, so shared pages rank high from the start."""
_MAX_LOG_WEIGHT = 500.0  # renormalise before exp() gets near float overflow


class WeightDBPolicy(RankedPolicy):
    name = "weightdb"

    def __init__(
        self,
        page_models: PageModels,
        half_life_passes: float = HALF_LIFE_PASSES,
        prior_requests: float = PRIOR_REQUESTS,
    ) -> None:
        super().__init__()
        self._prior_requests = prior_requests
        self._page_models = page_models
        self._decay_per_page = math.log(2) / half_life_passes
        self._models: dict[int, tuple[str, ...]] = {}  # page -> models referencing it
        self._model_pages: Counter[str] = Counter()  # model -> pages seen that it references
        self._log_weight = 0.0  # log of the weight of a request made now
        self._demand: Counter[str] = Counter()  # model -> decayed page requests, scaled
        self._prior: dict[str, float] = {}  # model -> decayed pseudo-requests, scaled
        self._changes = 0  # bumped whenever a model's rate may have changed
        self._priority_memo: dict[tuple[str, ...], tuple[int, float]] = {}

    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        self._learn(page_id)
        if model is not None and model not in self._models[page_id]:
            self._models[page_id] = tuple(sorted((*self._models[page_id], model)))
            self._count_page_of(model)
        self._log_weight += self._decay_per_page / len(self._models)
        if self._log_weight > _MAX_LOG_WEIGHT:
            self._rescale()
        if model is not None:
            self._demand[model] += math.exp(self._log_weight)
            self._changes += 1
        super().on_request(page_id, model, hit)

    def on_insert(self, page_id: int) -> None:
        self._learn(page_id)
        super().on_insert(page_id)

    def _key(self, page_id: int) -> tuple[float, int]:
        return self._priority(self._models[page_id]), -self._last_request.get(page_id, 0)

    def _priority(self, models: tuple[str, ...]) -> float:
        memo = self._priority_memo.get(models)
        if memo is not None and memo[0] == self._changes:
            return memo[1]
        value = sum(
            self._demand[model] / self._model_pages[model] + self._prior[model] for model in models
        )
        self._priority_memo[models] = (self._changes, value)
        return value

    def _learn(self, page_id: int) -> None:
        if page_id not in self._models:
            self._models[page_id] = tuple(sorted(set(self._page_models(page_id))))
            for model in self._models[page_id]:
                self._count_page_of(model)

    def _count_page_of(self, model: str) -> None:
        if model not in self._prior:
            self._prior[model] = self._prior_requests * math.exp(self._log_weight)
        self._model_pages[model] += 1
        self._changes += 1

    def _rescale(self) -> None:
        scale = math.exp(-self._log_weight)
        for model in self._demand:
            self._demand[model] *= scale
        for model in self._prior:
            self._prior[model] *= scale
        self._log_weight = 0.0
        self._changes += 1
        self._rebuild()
