"""A lower bound on the bytes any online policy can expect to read on a trace's mix of queries.

Belady's ``opt`` knows the order of the requests, which no server does, so "x times opt" mixes
two things: how well a policy learns which pages matter, and the order it cannot know. This
bound separates them. Suppose the queries arrive independently, each drawn from the trace's own
mix (every query of the trace equally likely). When a query arrives, the pool holds some set C of
pages of at most the budget, chosen before the query was known, and the query must read at least
those of its pages not in C. So no policy, even one told every page's popularity in advance, can
expect a query to cost less than

    min over C within the budget of  sum over pages p not in C of  bytes(p) x P(query reads p),

a 0/1 knapsack (keep the pages of most bytes x visits within the budget), solved exactly with
HiGHS. Times the number of queries, that is the bound. It leaves out what a query must re-read
of its own pages when they do not fit together, so it is low, never high. Opt may read less than
the bound: it saves by knowing the order, which an online policy can only be lucky about.

Queries are told apart as ``Trace.starts_query`` says; without query ids, back-to-back queries
of one model count as one, which only lowers the bound.
"""

import math

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from weightdb.caching.simulate import Budget
from weightdb.caching.trace import Trace


def page_visits(trace: Trace) -> np.ndarray:
    """Per page, the number of queries that read it."""
    visits = np.zeros(len(trace.page_ids), dtype=np.int64)
    query: set[int] = set()
    for number, (_, page) in enumerate(trace.requests):
        if trace.starts_query(number):
            visits[list(query)] += 1
            query = set()
        query.add(page)
    visits[list(query)] += 1
    return visits


def online_bound(trace: Trace, budget: Budget) -> int:
    """Bytes any online policy must expect to read serving ``trace``'s queries in an unknown,
    independent order with ``budget`` (see the module docstring)."""
    visits = page_visits(trace)
    touched = np.flatnonzero(visits)
    if touched.size == 0:
        return 0
    size = np.asarray(trace.page_bytes, dtype=np.float64)[touched]
    value = size * visits[touched]  # exact: below 2**53 for any trace that fits in memory
    rows, limits = [], []
    if budget.bytes is not None:
        rows.append(size)
        limits.append(budget.bytes)
    if budget.pages is not None:
        rows.append(np.ones_like(size))
        limits.append(budget.pages)
    kept = milp(
        -value,
        constraints=LinearConstraint(np.array(rows), 0, limits),
        integrality=np.ones_like(size),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )
    if not kept.success:
        raise RuntimeError(f"HiGHS could not solve the knapsack: {kept.message}")
    # The solver's dual bound caps the value any cache can keep, so the bound stays a lower
    # bound even if the solution it found were not optimal.
    return max(0, math.floor(value.sum() + kept.mip_dual_bound))
