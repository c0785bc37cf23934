"""The exact optimum: an integer program over page types and copy patterns (scipy's HiGHS).

Variables (see ``patterns``): y[S, P] = blocks of signature S copied to the types of pattern P,
and p[T] = pages of type T. Minimise the pages, sum p[T], subject to
    sum over (S, P) with T in P of y[S, P] <= l * p[T]   for every type T,
    sum over P of y[S, P] = |group S|                      for every signature S,
    sum over T containing m of p[T] >= ceil(|blocks of m| / l)   (a valid cut per model m).
Ties are broken by a term below one page: pages read weighted by model frequency, then copies.

This is exact, not a relaxation: a page's type can always be taken to be the set of models
using all its blocks, which is an intersection of signatures, so types range over the
intersection closure of the signatures; and a block needs only a minimal cover of its
signature. Both sets grow quickly with the number of models, hence the limits below.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from weightdb.packing.instance import Instance, PackingError, Signature
from weightdb.packing.patterns import Pattern, materialize, minimal_covers

MAX_TYPES = 2_000
MAX_PATTERNS = 20_000
"""Per signature."""


@dataclass(frozen=True)
class OptimalPacking:
    pages: list[list[int]]
    proved_optimal: bool
    bound: int
    """A proven lower bound on the pages of any valid layout."""


def optimal(instance: Instance, time_limit: float = 60.0) -> OptimalPacking:
    """Solve exactly, or return the best layout found within ``time_limit`` seconds."""
    deadline = time.monotonic() + time_limit
    capacity = instance.blocks_per_page
    groups = instance.signature_groups()
    types = _intersection_closure(groups)
    columns = [
        (signature, pattern)
        for signature in groups
        for pattern in minimal_covers(signature, types, limit=MAX_PATTERNS)
    ]
    type_index = {page_type: i for i, page_type in enumerate(types)}
    n_columns, n_types = len(columns), len(types)
    upper_bound = sum(math.ceil(len(blocks) / capacity) for blocks in groups.values())

    capacity_rows: dict[Signature, list[int]] = {page_type: [] for page_type in types}
    group_rows: dict[Signature, list[int]] = {signature: [] for signature in groups}
    for j, (signature, pattern) in enumerate(columns):
        group_rows[signature].append(j)
        for page_type in pattern:
            capacity_rows[page_type].append(j)
    matrix = _RowBuilder()
    for page_type, uses in capacity_rows.items():
        page_column = n_columns + type_index[page_type]
        matrix.add({**dict.fromkeys(uses, 1.0), page_column: -capacity}, -np.inf, 0)
    for signature, uses in group_rows.items():
        matrix.add(dict.fromkeys(uses, 1.0), len(groups[signature]), len(groups[signature]))
    for model, blocks in instance.models.items():
        readable = [n_columns + t for page_type, t in type_index.items() if model in page_type]
        matrix.add(dict.fromkeys(readable, 1.0), math.ceil(len(blocks) / capacity), np.inf)
    all_pages = range(n_columns, n_columns + n_types)
    matrix.add(dict.fromkeys(all_pages, 1.0), instance.lower_bound_pages, np.inf)

    copies, reads = _tie_break(instance, columns, types, upper_bound)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PackingError(f"time limit of {time_limit:g} s spent building the exact model")
    result = milp(
        np.concatenate([copies, 1.0 + reads]),
        constraints=matrix.constraint(n_columns + n_types),
        integrality=np.ones(n_columns + n_types),
        bounds=Bounds(0, np.r_[np.full(n_columns, np.inf), np.full(n_types, upper_bound)]),
        options={"time_limit": remaining, "mip_rel_gap": 0.25 / (upper_bound + 1)},
    )
    # The tie-break adds less than one page, so any objective bound minus one rounds up to a
    # valid page bound; HiGHS reports the bound even when it stops at the time limit.
    dual = getattr(result, "mip_dual_bound", None)
    bound = instance.lower_bound_pages
    if dual is not None and np.isfinite(dual):
        bound = max(bound, math.ceil(dual - 1 + 1e-9))
    if result.x is None:
        raise PackingError(
            f"no layout found within {time_limit:g} s (best bound {bound} pages); "
            "raise --time-limit or use --algorithm dissolve"
        )
    counts = np.rint(result.x).astype(int)
    assignment: dict[Signature, list[tuple[Pattern, int]]] = {s: [] for s in groups}
    for (signature, pattern), count in zip(columns, counts[:n_columns], strict=True):
        if count:
            assignment[signature].append((pattern, int(count)))
    pages = materialize(groups, assignment, capacity)
    proved = result.status == 0
    return OptimalPacking(pages, proved, len(pages) if proved else min(bound, len(pages)))


def _intersection_closure(groups: dict[Signature, list[int]]) -> list[Signature]:
    """Signatures and all their non-empty intersections: the page types worth considering."""
    closure = set(groups)
    frontier = set(groups)
    while frontier:
        new = {a & b for a in frontier for b in closure if a & b} - closure
        closure |= new
        frontier = new
        if len(closure) > MAX_TYPES:
            raise PackingError(
                f"too many page types (> {MAX_TYPES}) for the exact model; use --algorithm dissolve"
            )
    return sorted(closure, key=lambda t: (-len(t), sorted(t)))


def _tie_break(
    instance: Instance,
    columns: list[tuple[Signature, Pattern]],
    types: list[Signature],
    upper_bound: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Costs per copy pattern and per page type that add up to less than one page.

    Half a page at most for copies, half for pages read weighted by model frequency, each
    divided by the largest value it can take in a layout of at most ``upper_bound`` pages.
    """
    copies_worst = sum(len(blocks) for blocks in instance.models.values())
    copies = np.array([0.5 * (len(pattern) - 1) / (copies_worst + 1.0) for _, pattern in columns])
    weights = np.array([sum(instance.frequency(m) for m in t) for t in types], dtype=float)
    reads_worst = sum(map(instance.frequency, instance.models)) * upper_bound
    return copies, 0.5 * weights / (reads_worst + 1.0)


class _RowBuilder:
    """Sparse constraint rows, added one at a time as {column: coefficient}."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.values: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, entries: dict[int, float], lower: float, upper: float) -> None:
        row = len(self.lower)
        self.rows += [row] * len(entries)
        self.cols += entries.keys()
        self.values += entries.values()
        self.lower.append(lower)
        self.upper.append(upper)

    def constraint(self, n_columns: int) -> LinearConstraint:
        shape = (len(self.lower), n_columns)
        matrix = coo_matrix((self.values, (self.rows, self.cols)), shape=shape).tocsr()
        return LinearConstraint(matrix, self.lower, self.upper)
