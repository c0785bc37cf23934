"""One entry point for every packing algorithm, and the numbers that describe its result."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from weightdb.packing import netsdb
from weightdb.packing.dissolve import dissolve
from weightdb.packing.instance import Instance, PackingError
from weightdb.packing.layout import Layout
from weightdb.progress import Progress, silent
from weightdb.registry import Registry

ONE_PASS: dict[str, Callable[[Instance], list[list[int]]]] = {
    "baseline": netsdb.baseline,
    "greedy1": netsdb.greedy1,
    "greedy2": netsdb.greedy2,
    "two-stage": netsdb.two_stage,
}
"""The netsDB packers: single passes, linear in the instance, with nothing to stop early."""
ALGORITHMS: Registry[str] = Registry(
    {
        "baseline": "netsDB: models in arrival order, shared blocks copied",
        "greedy1": "netsDB: each signature on pages of its own, every block stored once",
        "greedy2": "netsDB: largest model first, its most shared blocks first",
        "two-stage": "netsDB: full pages per signature, then greedy2 over the rest",
        "dissolve": "greedy1, then its partly filled pages dissolved into free slots",
        "optimal": "the integer program's optimum within the time limit (scipy)",
    },
    aliases={"weightdb": "dissolve"},
)
"""Name -> what the algorithm does; ``weightdb`` is the old name of ``dissolve``."""
DEFAULT_ALGORITHM = "dissolve"
DEFAULT_TIME_LIMIT = 60.0


@dataclass(frozen=True)
class PackingResult:
    instance: Instance
    algorithm: str
    layout: Layout
    seconds: float
    proved_optimal: bool | None = None
    """For ``optimal`` only: whether the solver proved that no layout has fewer pages."""
    bound_pages: int | None = None
    """For ``optimal`` only: the best lower bound on pages the solver proved."""
    search_finished: bool | None = None
    """For ``dissolve`` only: whether the search ran to its end rather than stopping at the
    time limit with the best layout so far."""

    @property
    def pages(self) -> int:
        return len(self.layout.pages)

    def weighted_pages_read(self) -> float:
        """Pages read per request, averaged over models weighted by how often each is served."""
        total = sum(map(self.instance.frequency, self.instance.models))
        reads = self.layout.pages_read()
        return sum(self.instance.frequency(m) * reads[m] for m in reads) / total if total else 0.0

    def summary(self) -> dict:
        """The JSON result of ``weightdb packing solve``."""
        instance = self.instance
        return {
            "instance": instance.name,
            "algorithm": self.algorithm,
            "blocks_per_page": instance.blocks_per_page,
            "distinct_blocks": instance.distinct_blocks,
            "pages": self.pages,
            "lower_bound_pages": instance.lower_bound_pages,
            "gap_to_lower_bound": self.pages - instance.lower_bound_pages,
            "stored_blocks": self.layout.stored_blocks,
            "copied_blocks": self.layout.copied_blocks,
            "unread_pages": self.layout.unread_pages,
            "weighted_pages_read": round(self.weighted_pages_read(), 4),
            "seconds": round(self.seconds, 6),
            "proved_optimal": self.proved_optimal,
            "bound_pages": self.bound_pages,
            "search_finished": self.search_finished,
            "netsdb_reference_pages": dict(instance.reference_pages),
            "models": {
                model: {
                    "blocks": len(instance.models[model]),
                    "pages_read": reads,
                    "frequency": instance.frequency(model),
                }
                for model, reads in self.layout.pages_read().items()
            },
        }


def solve(
    instance: Instance,
    algorithm: str = DEFAULT_ALGORITHM,
    time_limit: float = DEFAULT_TIME_LIMIT,
    progress: Progress | None = None,
) -> PackingResult:
    """Pack ``instance`` with ``algorithm`` in about ``time_limit`` seconds at most.

    ``dissolve`` (alias ``weightdb``) stops its search at the limit with the best layout so
    far and reports ``progress`` (types tried, of types to try); ``optimal`` returns the best
    layout its solver found, proved or not. The netsDB packers are single passes linear in
    the instance, with no partial layout to stop at; they take seconds at 200,000 blocks.
    """
    if algorithm not in ALGORITHMS:
        raise PackingError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    algorithm = ALGORITHMS.canonical(algorithm)
    start = time.perf_counter()
    if algorithm == "optimal":
        from weightdb.packing.optimal import optimal  # scipy is optional: the `optim` extra

        exact = optimal(instance, time_limit)
        layout = Layout.from_pages(instance, exact.pages)
        return PackingResult(
            instance,
            algorithm,
            layout,
            time.perf_counter() - start,
            proved_optimal=exact.proved_optimal,
            bound_pages=exact.bound,
        )
    finished = None
    if algorithm == "dissolve":
        pages, finished = dissolve(instance, time_limit, progress or silent)
    else:
        pages = ONE_PASS[algorithm](instance)
    layout = Layout.from_pages(instance, pages)
    return PackingResult(
        instance, algorithm, layout, time.perf_counter() - start, search_finished=finished
    )


def pack(
    models: Mapping[str, Sequence[int]],
    blocks_per_page: int,
    frequencies: Mapping[str, float] | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> list[list[int]]:
    """Pages (lists of block ids) for models given as name -> distinct block ids.

    The plain entry point when only the pages matter (``solve`` also says which page each
    model reads). Pages may hold copies of a block (see ``layout``); ``greedy1`` is the best
    layout that stores every block exactly once.
    """
    instance = Instance.from_models(models, blocks_per_page, frequencies)
    return [list(page) for page in solve(instance, algorithm).layout.pages]
