"""Our default packer (``dissolve``): Greedy-1, then dissolve partly filled pages.

Start from Greedy-1, where each signature has pages of its own type (see ``patterns``): no
copies, but every signature whose size is not a multiple of l leaves a partly filled last page.
Then repeatedly *dissolve* such a last page: move its few blocks into free slots of pages of
other types that together cover the block's readers, copying the block if one type does not
cover them all. A dissolve removes one page, lowers the pages read by every model of that type
and creates no page, so the search only improves; it stops when no page can be dissolved.

Pages whose readers are served most often are dissolved first, so when free slots run out the
popular models are the ones that read fewer pages. Among covers, fewer copies win.

Lineages of fine-tunes have thousands of signatures, so the search avoids scanning them: the
types with free slots that may take over a block's readers are found with bit masks over types
(free slots never reopen, so the mask only loses bits); a candidate move is costed only when it
reaches the top of a heap; and after the first pass over all types a type is tried again only
if a block on it changed pattern (free slots only shrink, so little else can turn a failed
dissolve into one that works). Time still grows faster than linearly in signatures (see
``benchmarks/results/packing_lineages.md``); since every dissolve keeps the layout valid and
saves a page, a time limit stops the search with the best layout so far.
"""

import heapq
import math
import time
from collections import Counter, defaultdict

from weightdb.packing.instance import Instance, Signature
from weightdb.packing.patterns import Pattern, materialize
from weightdb.progress import Progress, silent

_Cover = tuple[int, int, int]
"""A type that may take over readers: (minus its number of models, its rank, its models as a
bit mask), so that sorting puts the largest first."""


def dissolve(
    instance: Instance, time_limit: float | None = None, progress: Progress = silent
) -> tuple[list[list[int]], bool]:
    """The pages, and whether the search ran to its end (False: it stopped at the time limit
    with the best layout so far). ``progress`` counts page types tried of those to try; the
    total grows when a dissolve gives types already tried a new chance."""
    groups = instance.signature_groups()
    search = _DissolveSearch(instance, groups)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    finished = search.run(deadline, progress)
    return materialize(groups, search.assignment(), instance.blocks_per_page), finished


class _DissolveSearch:
    def __init__(self, instance: Instance, groups: dict[Signature, list[int]]) -> None:
        self.capacity = instance.blocks_per_page
        self.weight = {
            signature: math.fsum(map(instance.frequency, signature)) for signature in groups
        }
        self.rank = {signature: index for index, signature in enumerate(groups)}
        """Ties between equally good covers go to the type seen first, in every process."""
        self.patterns: dict[Signature, Counter[Pattern]] = {
            signature: Counter({frozenset([signature]): len(blocks)})
            for signature, blocks in groups.items()
        }
        self.load: Counter[Signature] = Counter({s: len(b) for s, b in groups.items()})
        self.slack = {s: -len(b) % self.capacity for s, b in groups.items()}
        """Page type -> free slots on its last page."""
        # Sets of types as bit masks by rank, so that finding the types with free slots that
        # may take over some readers is a few integer operations, not a scan of all types.
        self.types = list(groups)
        self.holders: dict[str, int] = defaultdict(int)
        """Model -> the types it may read."""
        for signature in groups:
            for model in signature:
                self.holders[model] |= 1 << self.rank[signature]
        self.open = sum(1 << self.rank[s] for s, slack in self.slack.items() if slack)
        """The types with free slots."""
        models = {model: 1 << index for index, model in enumerate(self.holders)}
        self.members = {s: sum(models[model] for model in s) for s in groups}
        """Type -> its models as a bit mask."""
        self.members_by_rank = list(self.members.values())
        self.subset_covers: dict[Signature, list[_Cover]] = {}
        """Signature -> the types that are subsets of it and had free slots when it was first
        needed, largest first (types that filled up since are skipped, slots never reopen)."""
        self.users: dict[Signature, dict[Signature, None]] = defaultdict(dict)
        """Page type -> the signatures with blocks on pages of that type (an ordered set, so
        that ties break the same way in every process)."""
        for signature in groups:
            self.users[signature][signature] = None
        self.changed: set[Signature] = set()
        """The types whose blocks changed pattern in this pass: the ones worth another try."""

    def run(self, deadline: float | None, progress: Progress) -> bool:
        """Try every type once, then again those whose blocks changed pattern since their
        last try, until nothing changes (True) or the deadline passes (False)."""
        pending = list(self.load)
        done = 0
        while pending:
            total = done + len(pending)
            self.changed.clear()
            for page_type in sorted(pending, key=self._dissolve_order):
                if deadline is not None and time.monotonic() > deadline:
                    return False
                self._dissolve(page_type)
                done += 1
                progress(1, total)
            pending = [t for t in self.changed if self.load[t] % self.capacity]
        return True

    def assignment(self) -> dict[Signature, list[tuple[Pattern, int]]]:
        return {
            signature: [(pattern, count) for pattern, count in counts.items() if count]
            for signature, counts in self.patterns.items()
        }

    def _dissolve_order(self, page_type: Signature) -> tuple[int, float, int]:
        return (
            self.load[page_type] % self.capacity,
            -self.weight.get(page_type, 0.0),
            self.rank[page_type],
        )

    def _dissolve(self, page_type: Signature) -> bool:
        """Empty the last page of ``page_type`` into free slots elsewhere, or change nothing.

        Candidate moves wait in a heap by copies added, cheapest first (ties: first seen).
        A move's cost is computed when it reaches the top, starting from a lower bound (none
        if the rest of its pattern already covers ``page_type``'s readers, else one), and again
        when earlier moves took free slots; it goes back if it now costs more.
        """
        excess = self.load[page_type] % self.capacity
        if not excess:
            return False
        available = Counter(
            {
                (signature, pattern): count
                for signature in self.users[page_type]
                for pattern, count in self.patterns[signature].items()
                if page_type in pattern and count
            }
        )
        reserved: dict[Signature, int] = Counter()
        heap: list[tuple[int, int, Signature, Pattern, Pattern | None, int]] = [
            (1 if self._need(pattern, page_type) else 0, order, signature, pattern, None, -1)
            for order, (signature, pattern) in enumerate(available)
        ]
        heapq.heapify(heap)
        moves: list[tuple[Signature, Pattern, Pattern, int]] = []
        while excess:
            if not heap:
                return False
            cost, order, signature, pattern, new, seen = heapq.heappop(heap)
            if new is None or seen < len(moves):  # a bound, or free slots were taken since
                new = self._recover(pattern, page_type, self._covers(signature), reserved)
                if new is None:
                    continue
                if len(new - pattern) > cost:
                    heapq.heappush(
                        heap, (len(new - pattern), order, signature, pattern, new, len(moves))
                    )
                    continue
            added = new - pattern
            units = min(
                [excess, available[signature, pattern]]
                + [self.slack[t] - reserved[t] for t in added]
            )
            moves.append((signature, pattern, new, units))
            available[signature, pattern] -= units
            reserved.update(dict.fromkeys(added, units))
            excess -= units
            if available[signature, pattern]:
                heapq.heappush(heap, (cost, order, signature, pattern, new, len(moves) - 1))
        for signature, pattern, new, units in moves:
            self._apply(signature, pattern, new, units)
        return True

    def _need(self, pattern: Pattern, dropped: Signature) -> int:
        """The readers of ``dropped`` that the rest of ``pattern`` does not cover (bit mask)."""
        need = self.members[dropped]
        for page_type in pattern:
            if page_type != dropped:
                need &= ~self.members[page_type]
        return need

    def _covers(self, signature: Signature) -> list["_Cover"]:
        """The types that may take over readers of ``signature``'s blocks (see
        ``subset_covers``), largest first, then by rank."""
        if signature not in self.subset_covers:
            outside = self._any_of(frozenset(self.holders) - signature)
            members = self.members_by_rank
            self.subset_covers[signature] = sorted(
                (-members[index].bit_count(), index, members[index])
                for index in _bits(self.open & ~outside)
            )
        return self.subset_covers[signature]

    def _recover(
        self,
        pattern: Pattern,
        dropped: Signature,
        covers: list["_Cover"],
        reserved: dict[Signature, int],
    ) -> Pattern | None:
        """``pattern`` without ``dropped``, its readers covered by ``covers`` with free slots
        (greedy set cover: most readers covered, then most free slots, then lowest rank)."""
        need = self._need(pattern, dropped)
        slack, types, skip = self.slack, self.types, self.rank[dropped]
        candidates = [
            (-minus_size, -rank, members, free, types[rank])
            for minus_size, rank, members in covers
            if members & need
            and rank != skip
            and (free := slack[types[rank]] - reserved.get(types[rank], 0)) > 0
        ]
        chosen: list[Signature] = []
        while need:
            best_key, best = (0, 0, 0), None
            for size, minus_rank, members, free, page_type in candidates:
                if size < best_key[0]:
                    break  # sorted by size: no later type covers more
                covered = (members & need).bit_count()
                if covered and (covered, free, minus_rank) > best_key:
                    best_key, best = (covered, free, minus_rank), (members, page_type)
            if best is None:
                return None
            need &= ~best[0]
            chosen.append(best[1])
        return pattern - {dropped} | frozenset(chosen)

    def _apply(self, signature: Signature, old: Pattern, new: Pattern, units: int) -> None:
        self.patterns[signature][old] -= units
        self.patterns[signature][new] += units
        self.changed.update(old | new)
        for page_type in old - new:
            self._add_load(page_type, -units)
        for page_type in sorted(new - old, key=self.rank.__getitem__):
            self._add_load(page_type, units)
            self.users[page_type][signature] = None

    def _add_load(self, page_type: Signature, units: int) -> None:
        """Change a type's load; once its last page is full (or gone) it never reopens."""
        self.load[page_type] += units
        self.slack[page_type] = -self.load[page_type] % self.capacity
        if not self.slack[page_type]:
            self.open &= ~(1 << self.rank[page_type])

    def _any_of(self, models: Signature) -> int:
        """The types that hold some of ``models``."""
        mask = 0
        for model in models:
            mask |= self.holders[model]
        return mask


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of ``mask``, lowest first."""
    digits = bin(mask)[:1:-1]
    positions = []
    position = digits.find("1")
    while position >= 0:
        positions.append(position)
        position = digits.find("1", position + 1)
    return positions
