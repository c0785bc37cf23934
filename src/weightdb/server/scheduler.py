"""Sharing-aware scheduling of one round of batches: every shared page is read once per round.

A round holds the batches of several models. Models fine-tuned from one base share most of
their pages, so the scheduler runs them back to back (each next model is the one sharing the
most pages with the last, the first is the one with the most pages already resident) and,
after a model has run, keeps the pages it read that a later model of the round also needs
pinned until that later model has run. Pages are held only once read, never read ahead: an
embedding lookup reads only the row blocks its ids need, and holding must not change that.
Held pages take at most ``hold_fraction`` of the budget left after the weights prepared
models keep resident (pool reservations), leaving the rest for the pages each model streams;
with no budget nothing is ever evicted, so nothing needs holding.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from weightdb.database import Database
from weightdb.errors import WeightDBError


class SharingScheduler:
    def __init__(self, db: Database, hold_fraction: float = 0.5) -> None:
        self._db = db
        self._hold_fraction = hold_fraction
        self._pages: dict[str, tuple[tuple[int, int], frozenset[int]]] = {}

    def pages(self, model: str) -> frozenset[int]:
        """The pages the model reads its blocks from; empty for a model that does not exist (its
        requests fail on their own, they must not fail the round)."""
        try:
            catalog = self._db.store.catalog
            key = (catalog.model_id(model), catalog.layout_generation())
        except WeightDBError:
            return frozenset()
        cached = self._pages.get(model)
        if cached is None or cached[0] != key:
            cached = (key, catalog.model_pages(key[0]))
            self._pages[model] = cached
        return cached[1]

    def order(self, models: list[str]) -> list[str]:
        """``models`` in the order that keeps shared pages hot (ties keep arrival order)."""
        pages = {model: self.pages(model) for model in models}
        resident = self._db.pool.resident().keys()
        remaining = list(models)
        ordered = [max(remaining, key=lambda m: len(pages[m] & resident))]
        remaining.remove(ordered[0])
        while remaining:
            last = pages[ordered[-1]]
            ordered.append(max(remaining, key=lambda m: len(pages[m] & last)))
            remaining.remove(ordered[-1])
        return ordered

    @contextmanager
    def round(self, models: list[str]) -> Iterator["Round"]:
        """A round over ``models``: iterate ``round.order`` and call ``round.finished(model)``
        after each model's batches ran; held pages are unpinned when the round ends."""
        hold = None if self._db.pool.budget_bytes is None else self._hold_fraction
        current = Round(self._db, self.order(models), self.pages, hold)
        try:
            yield current
        finally:
            current.release_all()


class Round:
    def __init__(self, db: Database, order: list[str], pages, hold_fraction: float | None) -> None:
        self.order = order
        self._db = db
        self._pages = {model: pages(model) for model in order}
        self._hold_fraction = hold_fraction
        self._held: dict[int, int] = {}  # page id -> bytes

    def finished(self, model: str) -> None:
        """Release held pages no later model needs; hold the ones this model read that a later
        model needs."""
        if self._hold_fraction is None:
            return
        later_models = self.order[self.order.index(model) + 1 :]
        later = frozenset().union(*(self._pages[m] for m in later_models))
        for page in [p for p in self._held if p not in later]:
            self._release(page)
        resident = self._db.pool.resident().keys()
        stats = self._db.pool.stats()
        cap = int(stats.budget_bytes * self._hold_fraction)
        for page in sorted((self._pages[model] & later & resident) - self._held.keys()):
            size = self._db.store.locate_page(page).length
            if sum(self._held.values()) + size > cap:
                break
            user = next(m for m in later_models if page in self._pages[m])
            self._db.pool.pin(page, user)
            self._held[page] = size

    def _release(self, page: int) -> None:
        self._db.pool.unpin(page)
        del self._held[page]

    def release_all(self) -> None:
        for page in list(self._held):
            self._release(page)
