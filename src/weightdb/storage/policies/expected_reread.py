"""Expected re-read: evict the page whose loss costs the fewest expected bytes read again.

This is the default policy (``expected-reread``, once called ``weightdb``).


A page's rate, the expected number of times it is needed per unit of time, has two parts. Its
own decayed count of visits (a request's reads of one page, a block at a time, count once) says
how often the requests actually read it: an embedding's pages of common tokens are read by most
requests, those of rare tokens by few. To that is added a share of the rates of all the models
that reference it, which only the database knows: a model's rate is its decayed visits divided
by the number of pages it references. That share makes a page of a popular model, or one shared
by many models, valuable before its own history says so (its first request, or after a shift in
popularity), and a small prior per model ranks shared pages high from the start. Models seen
requesting a page count as referencing it, so sharing the catalog lookup does not report is
learnt from the requests.

Evicting a page costs its rate times its size in bytes re-read later; the victim is the page for
which that is least, so a small page (the tail of a tensor run) goes before a full page of a
slightly rarer model. Losses within a factor of ``TIE_FACTOR`` count as equal, because they are
estimates: pages of one sharing set are ties even though the set is read front to back and its
last page was counted most recently. Ties go to the most recently requested page: in a model's
front-to-back read that page is needed last next time, and the pool keeps hitting part of a set
larger than it can hold instead of cycling through all of it like LRU.

Under independent model requests, with every request reading all of its model's pages and pages
of one size, keeping the pages of largest rate is as good as an online policy gets: a request's
hits are its model's pages resident when it starts. What remains to Belady's offline optimum is
knowing which model comes next (``weightdb.caching.online_bound`` measures both parts). The
decay (a half-life of some hundred visits of every page seen so far) lets the ranking follow a
shift in popularity.

Within a query the engine's reads are not random: a model's plan reads its weights in the same
order every run (an embedding's rows vary with the input). So the policy remembers the pages of
each model's latest query, in order, and when the model's next query starts expects the same
reads. A page the running query is expected to read again is evicted only when every candidate
is, and then the one expected last (Belady's rule within the query); other pages go by loss.
This keeps a model larger than the pool from evicting pages it is about to re-read.
"""

import math
from collections import Counter

from weightdb.storage.policies.base import PageModels
from weightdb.storage.policies.ranked import RankedPolicy

HALF_LIFE_PASSES = 128.0
"""Half-life of a visit's weight, in visits per distinct page seen; tuned on recorded traces."""
PRIOR_VISITS = 1.0
"""Visits credited to a model when it is first seen, so shared pages rank high from the start."""
MODEL_SHARE = 0.2
"""Weight of the referencing models' rates in a page's rate, next to its own visits."""
TIE_FACTOR = 1.25
"""Losses closer than this factor are ties; the constants were tuned on recorded zoo traces."""
_MAX_LOG_WEIGHT = 500.0  # renormalise before exp() gets near float overflow
_LOG_TIE_FACTOR = math.log(TIE_FACTOR)


class ExpectedRereadPolicy(RankedPolicy):
    name = "expected-reread"

    def __init__(
        self,
        page_models: PageModels,
        half_life_passes: float = HALF_LIFE_PASSES,
        prior_visits: float = PRIOR_VISITS,
    ) -> None:
        super().__init__()
        self._prior_visits = prior_visits
        self._page_models = page_models
        self._decay_per_page = math.log(2) / half_life_passes
        self._models: dict[int, tuple[str, ...]] = {}  # page -> models referencing it
        self._model_pages: Counter[str] = Counter()  # model -> pages seen that it references
        self._bytes: dict[int, int] = {}  # resident page -> its size
        self._visiting: dict[str, int] = {}  # model -> the page its latest request was for
        self._page_visits: Counter[int] = Counter()  # page -> decayed visits, scaled
        self._log_weight = 0.0  # log of the weight of a visit made now
        self._demand: Counter[str] = Counter()  # model -> decayed page visits, scaled
        self._prior: dict[str, float] = {}  # model -> decayed pseudo-visits, scaled
        self._changes = 0  # bumped whenever a model's rate may have changed
        self._models_rate_memo: dict[tuple[str, ...], tuple[int, float]] = {}
        self._reads: dict[str, list[int]] = {}  # model -> pages its latest query read, in order
        self._query: tuple[str, list[int]] | None = None  # the running query: model, its reads
        self._ahead: dict[int, list[int]] = {}  # page -> where the query should read it, last first

    def on_query(self, model: str) -> None:
        if self._query is not None:
            self._reads[self._query[0]] = self._query[1]
        self._query = (model, [])
        # Pages the last query still expected rank anew (their keys may shrink): fresh entries.
        stale = [page for page, ahead in self._ahead.items() if ahead and page in self._live]
        self._ahead = {}
        for position, page in reversed(list(enumerate(self._reads.get(model, ())))):
            self._ahead.setdefault(page, []).append(position)
        for page in stale:
            self._push(page)

    def on_request(self, page_id: int, model: str | None, hit: bool) -> None:
        self._learn(page_id)
        if self._query is not None and self._query[0] == model:
            reads = self._query[1]
            if not reads or reads[-1] != page_id:  # a run of block reads is one read of a page
                reads.append(page_id)
                if self._ahead.get(page_id):
                    self._ahead[page_id].pop()
        if model is not None and model not in self._models[page_id]:
            self._models[page_id] = tuple(sorted((*self._models[page_id], model)))
            self._count_page_of(model)
        if model is not None and self._visiting.get(model) != page_id:
            self._visiting[model] = page_id
            self._log_weight += self._decay_per_page / len(self._models)
            if self._log_weight > _MAX_LOG_WEIGHT:
                self._rescale()
            self._demand[model] += math.exp(self._log_weight)
            self._page_visits[page_id] += math.exp(self._log_weight)
            self._changes += 1
        super().on_request(page_id, model, hit)

    def on_insert(self, page_id: int, nbytes: int) -> None:
        self._learn(page_id)
        self._bytes[page_id] = nbytes
        super().on_insert(page_id, nbytes)

    def on_remove(self, page_id: int) -> None:
        self._bytes.pop(page_id, None)
        super().on_remove(page_id)

    def _key(self, page_id: int) -> tuple[int, float, int]:
        ahead = self._ahead.get(page_id)
        if ahead:  # after every page the query is done with, the one it reads last
            return 1, -ahead[-1], 0
        rate = self._page_visits[page_id] + MODEL_SHARE * self._models_rate(self._models[page_id])
        loss = rate * self._bytes[page_id]
        loss_class = math.floor(math.log(loss) / _LOG_TIE_FACTOR) if loss > 0 else -math.inf
        return 0, loss_class, -self._last_request.get(page_id, 0)

    def _models_rate(self, models: tuple[str, ...]) -> float:
        memo = self._models_rate_memo.get(models)
        if memo is not None and memo[0] == self._changes:
            return memo[1]
        value = sum(
            self._demand[model] / self._model_pages[model] + self._prior[model] for model in models
        )
        self._models_rate_memo[models] = (self._changes, value)
        return value

    def _learn(self, page_id: int) -> None:
        if page_id not in self._models:
            self._models[page_id] = tuple(sorted(set(self._page_models(page_id))))
            for model in self._models[page_id]:
                self._count_page_of(model)

    def _count_page_of(self, model: str) -> None:
        if model not in self._prior:
            self._prior[model] = self._prior_visits * math.exp(self._log_weight)
        self._model_pages[model] += 1
        self._changes += 1

    def _rescale(self) -> None:
        scale = math.exp(-self._log_weight)
        for model in self._demand:
            self._demand[model] *= scale
        for model in self._prior:
            self._prior[model] *= scale
        for page in self._page_visits:
            self._page_visits[page] *= scale
        self._log_weight = 0.0
        self._changes += 1
        self._rebuild()
