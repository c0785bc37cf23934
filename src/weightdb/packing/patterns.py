"""Packing by page types: the model behind our own heuristic and the exact optimum.

A page's *type* is the set of models allowed to read it: the models that use every block on
it. A block of signature S may go on a page of type T only if T is a subset of S, and every
model of S must find it on a page whose type contains that model. So a block's *pattern*, the
set of types it is copied to, must cover S (and, to waste no copy, minimally). Blocks of one
signature are interchangeable, so a packing is just: per signature, how many of its blocks use
each pattern. Pages of one type are interchangeable too, so type T needs ceil(load(T) / l)
pages, load(T) being the copies sent to T.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from weightdb.packing.instance import PackingError, Signature
from weightdb.packing.layout import chunk

Pattern = frozenset[Signature]
"""The page types one block is copied to; a single type means the block is stored once."""

Assignment = Mapping[Signature, Sequence[tuple[Pattern, int]]]
"""Signature -> (pattern, number of its blocks that use the pattern), counts summing to the
group size."""


def materialize(
    groups: Mapping[Signature, Sequence[int]], assignment: Assignment, capacity: int
) -> list[list[int]]:
    """Turn pattern counts into pages: blocks take patterns in order, each type is chunked."""
    copies: dict[Signature, list[int]] = defaultdict(list)
    for signature, blocks in groups.items():
        start = 0
        for pattern, count in assignment[signature]:
            for page_type in pattern:
                copies[page_type].extend(blocks[start : start + count])
            start += count
        assert start == len(blocks), f"assignment of {sorted(signature)} covers {start} blocks"
    ordered = sorted(copies, key=lambda page_type: (-len(page_type), sorted(page_type)))
    return [page for page_type in ordered for page in chunk(copies[page_type], capacity)]


def minimal_covers(signature: Signature, types: Iterable[Signature], limit: int) -> list[Pattern]:
    """Every minimal set of ``types`` (subsets of ``signature``) whose union is ``signature``.

    Branches on the first uncovered model, so the work grows with the number of covers: past
    ``limit`` covers it gives up with a PackingError rather than run for hours.
    """
    candidates = [page_type for page_type in types if page_type <= signature]
    found: set[Pattern] = set()

    def extend(uncovered: frozenset[str], chosen: tuple[Signature, ...]) -> None:
        if not uncovered:
            found.add(frozenset(chosen))
            if len(found) > limit:
                raise PackingError(
                    f"more than {limit} copy patterns for one signature: too large for the "
                    "exact model; use --algorithm dissolve"
                )
            return
        model = min(uncovered)
        for page_type in candidates:
            if model in page_type and page_type not in chosen:
                extend(uncovered - page_type, (*chosen, page_type))

    extend(signature, ())
    return sorted(
        (pattern for pattern in found if _is_minimal(pattern)),
        key=lambda pattern: (len(pattern), sorted(sorted(t) for t in pattern)),
    )


def _is_minimal(pattern: Pattern) -> bool:
    """No type can be dropped: each one is the only cover of some model."""
    return all(page_type - frozenset().union(*(pattern - {page_type})) for page_type in pattern)
