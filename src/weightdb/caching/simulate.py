"""Replay a trace through a buffer pool's bookkeeping (no bytes moved) under one policy.

The simulated pool behaves like the real one: a request for a resident page is a hit; a miss
reads the page's bytes and evicts the policy's victims until the page fits in the budget, which
may limit pages, bytes or both. The policy is told where each query starts, as the engine tells
the real pool.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from weightdb.caching.belady import BeladyPolicy
from weightdb.caching.trace import Trace
from weightdb.errors import BudgetExceededError
from weightdb.storage.policies import POLICIES, ReplacementPolicy, make_policy
from weightdb.units import format_size

POLICY_NAMES = POLICIES.extended({"opt": BeladyPolicy})
"""Every policy a trace can be replayed under; ``opt`` is Belady's offline optimum."""


@dataclass(frozen=True)
class Budget:
    """Pool capacity; ``None`` leaves that dimension unlimited."""

    pages: int | None = None
    bytes: int | None = None

    def __post_init__(self) -> None:
        if self.pages is None and self.bytes is None:
            raise ValueError("a budget needs a page count, a byte size or both")

    def fits(self, pages: int, size: int) -> bool:
        return (self.pages is None or pages <= self.pages) and (
            self.bytes is None or size <= self.bytes
        )


@dataclass(frozen=True)
class SimulationResult:
    policy: str
    budget_pages: int | None
    budget_bytes: int | None
    requests: int
    hits: int
    misses: int
    bytes_read: int
    evictions: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hit_ratio": self.hit_ratio}


def _always(page_id: int) -> bool:
    return True


class SimulatedPool:
    """The frame table of a buffer pool without the frames."""

    def __init__(self, policy: ReplacementPolicy, page_bytes: Sequence[int], budget: Budget):
        largest = max(page_bytes, default=0)
        if not budget.fits(1, largest):
            raise BudgetExceededError(
                f"a budget of {budget.pages} pages / {budget.bytes} bytes cannot hold one page "
                f"of {format_size(largest)}; give at least 1 page and {largest} bytes"
            )
        self.policy = policy
        self.budget = budget
        self._page_bytes = page_bytes
        self.resident: set[int] = set()
        self.resident_bytes = 0
        self.hits = self.misses = self.bytes_read = self.evictions = 0

    def begin_query(self, model: str) -> None:
        self.policy.on_query(model)

    def request(self, page: int, model: str | None) -> bool:
        """Serve one page request; True on a hit."""
        hit = page in self.resident
        self.policy.on_request(page, model, hit)
        if hit:
            self.hits += 1
            return True
        self.misses += 1
        size = self._page_bytes[page]
        self.bytes_read += size
        while not self.budget.fits(len(self.resident) + 1, self.resident_bytes + size):
            self._evict()
        self.resident.add(page)
        self.resident_bytes += size
        self.policy.on_insert(page, size)
        return False

    def _evict(self) -> None:
        victim = self.policy.victim(_always)
        if victim not in self.resident:
            raise RuntimeError(f"policy {self.policy.name} chose {victim}, which is not resident")
        self.resident.remove(victim)
        self.resident_bytes -= self._page_bytes[victim]
        self.evictions += 1
        self.policy.on_remove(victim)


def build_policy(name: str, trace: Trace) -> ReplacementPolicy:
    """The policy ``name`` set up for replaying ``trace``."""
    return BeladyPolicy(trace) if name == "opt" else make_policy(name, trace.models_of)


def simulate(
    trace: Trace,
    policy: str | ReplacementPolicy,
    budget: Budget,
    observe: Callable[[SimulatedPool], None] | None = None,
) -> SimulationResult:
    """Replay ``trace`` under ``policy`` (a name, or a policy set up for this trace);
    ``observe`` sees the pool after every request."""
    if isinstance(policy, str):
        policy = build_policy(policy, trace)
    pool = SimulatedPool(policy, trace.page_bytes, budget)
    for number, (model, page) in enumerate(trace.requests):
        if trace.starts_query(number):
            pool.begin_query(model)
        pool.request(page, model)
        if observe is not None:
            observe(pool)
    return SimulationResult(
        policy=policy.name,
        budget_pages=budget.pages,
        budget_bytes=budget.bytes,
        requests=len(trace.requests),
        hits=pool.hits,
        misses=pool.misses,
        bytes_read=pool.bytes_read,
        evictions=pool.evictions,
    )


def compare(trace: Trace, budget: Budget) -> list[SimulationResult]:
    """Replay ``trace`` under every policy, ``opt`` last."""
    return [simulate(trace, name, budget) for name in POLICY_NAMES]
