"""Our default packer (``weightdb``): Greedy-1, then dissolve partly filled pages.

Start from Greedy-1, where each signature has pages of its own type (see ``patterns``): no
copies, but every signature whose size is not a multiple of l leaves a partly filled last page.
Then repeatedly *dissolve* such a last page: move its few blocks into free slots of pages of
other types that together cover the block's readers, copying the block if one type does not
cover them all. A dissolve removes one page, lowers the pages read by every model of that type
and creates no page, so the search only improves; it stops when no page can be dissolved.

Pages whose readers are served most often are dissolved first, so when free slots run out the
popular models are the ones that read fewer pages. Among covers, fewer copies win.
"""

import math
from collections import Counter, defaultdict

from weightdb.packing.instance import Instance, Signature
from weightdb.packing.patterns import Pattern, materialize


def weightdb(instance: Instance) -> list[list[int]]:
    groups = instance.signature_groups()
    search = _DissolveSearch(instance, groups)
    search.run()
    return materialize(groups, search.assignment(), instance.blocks_per_page)


class _DissolveSearch:
    def __init__(self, instance: Instance, groups: dict[Signature, list[int]]) -> None:
        self.capacity = instance.blocks_per_page
        self.weight = {
            signature: sum(instance.frequency(model) for model in signature) for signature in groups
        }
        self.patterns: dict[Signature, Counter[Pattern]] = {
            signature: Counter({frozenset([signature]): len(blocks)})
            for signature, blocks in groups.items()
        }
        self.load: Counter[Signature] = Counter({s: len(b) for s, b in groups.items()})
        self.users: dict[Signature, dict[Signature, None]] = defaultdict(dict)
        """Page type -> the signatures with blocks on pages of that type (an ordered set, so
        that ties break the same way in every process)."""
        for signature in groups:
            self.users[signature][signature] = None

    def run(self) -> None:
        improved = True
        while improved:
            improved = False
            for page_type in sorted(self.load, key=self._dissolve_order):
                improved |= self._dissolve(page_type)

    def assignment(self) -> dict[Signature, list[tuple[Pattern, int]]]:
        return {
            signature: [(pattern, count) for pattern, count in counts.items() if count]
            for signature, counts in self.patterns.items()
        }

    def _dissolve_order(self, page_type: Signature) -> tuple[int, float]:
        return self.load[page_type] % self.capacity, -self.weight.get(page_type, 0.0)

    def _slack(self, page_type: Signature) -> int:
        return (
            math.ceil(self.load[page_type] / self.capacity) * self.capacity - self.load[page_type]
        )

    def _dissolve(self, page_type: Signature) -> bool:
        """Empty the last page of ``page_type`` into free slots elsewhere, or change nothing."""
        excess = self.load[page_type] % self.capacity
        if not excess:
            return False
        reserved: Counter[Signature] = Counter()
        moves: list[tuple[Signature, Pattern, Pattern, int]] = []
        available = Counter(
            {
                (signature, pattern): count
                for signature in self.users[page_type]
                for pattern, count in self.patterns[signature].items()
                if page_type in pattern and count
            }
        )
        while excess:
            options = []
            for (signature, pattern), count in available.items():
                if count and (new := self._recover(signature, pattern, page_type, reserved)):
                    options.append((len(new - pattern), signature, pattern, new))
            if not options:
                return False
            _, signature, pattern, new = min(options, key=lambda option: option[0])
            added = new - pattern
            units = min(
                [excess, available[signature, pattern]]
                + [self._slack(t) - reserved[t] for t in added]
            )
            moves.append((signature, pattern, new, units))
            available[signature, pattern] -= units
            reserved.update(dict.fromkeys(added, units))
            excess -= units
        for signature, pattern, new, units in moves:
            self._apply(signature, pattern, new, units)
        return True

    def _recover(
        self, signature: Signature, pattern: Pattern, dropped: Signature, reserved: Counter
    ) -> Pattern | None:
        """``pattern`` without ``dropped``, its readers covered by types with free slots."""
        kept = pattern - {dropped}
        need = set(dropped - frozenset().union(*kept))
        chosen: list[Signature] = []
        while need:
            best = max(
                (
                    t
                    for t in self.load
                    if t != dropped
                    and t <= signature
                    and not need.isdisjoint(t)
                    and self._slack(t) > reserved[t]
                ),
                key=lambda t: (len(need & t), self._slack(t) - reserved[t]),
                default=None,
            )
            if best is None:
                return None
            chosen.append(best)
            need -= best
        return kept | frozenset(chosen)

    def _apply(self, signature: Signature, old: Pattern, new: Pattern, units: int) -> None:
        self.patterns[signature][old] -= units
        self.patterns[signature][new] += units
        for page_type in old - new:
            self.load[page_type] -= units
        for page_type in new - old:
            self.load[page_type] += units
            self.users[page_type][signature] = None
