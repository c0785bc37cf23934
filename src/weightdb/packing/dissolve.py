"""Our default packer (``dissolve``): Greedy-1, then dissolve partly filled pages.

Start from Greedy-1, where each signature has pages of its own type (see ``patterns``): no
copies, but every signature whose size is not a multiple of l leaves a partly filled last page.
Then repeatedly *dissolve* such a last page: move its few blocks into free slots of pages of
other types that together cover the block's readers, copying the block if one type does not
cover them all. A dissolve removes one page, lowers the pages read by every model of that type
and creates no page, so the search only improves; it stops when no page can be dissolved.

Pages whose readers are served most often are dissolved first, so when free slots run out the
popular models are the ones that read fewer pages. Among covers, fewer copies win.

Lineages of fine-tunes have thousands of signatures, so the search avoids scanning them: each
signature keeps the list of types that are subsets of it (the only ones that may take over its
blocks' readers), pruned of full types as they close (free slots never reopen), and a greedy
cover scores all of them at once with numpy over bit-mask words of their models; a candidate
move is costed only when it reaches the top of a heap, and costed again only when a later move
took slots of a type it chose (slots taken elsewhere only make other types less attractive);
after the first pass over all types a type is tried again only if a block on it changed
pattern (free slots only shrink, so little else can turn a failed dissolve into one that
works). Each greedy cover still grows with the number of subset types (13 to 16 covers per
type on lineages), so time grows faster than linearly in signatures; since every dissolve
keeps the layout valid and saves a page, a time limit stops the search with the best layout
so far.
"""

import heapq
import math
import time
from collections import Counter, defaultdict

import numpy as np

from weightdb.packing.instance import Instance, Signature
from weightdb.packing.patterns import Pattern, materialize
from weightdb.progress import Progress, silent


def dissolve(
    instance: Instance, time_limit: float | None = None, progress: Progress = silent
) -> tuple[list[list[int]], bool]:
    """The pages, and whether the search ran to its end (False: it stopped at the time limit
    with the best layout so far). ``progress`` counts page types tried of those to try; the
    total grows when a dissolve gives types already tried a new chance."""
    groups = instance.signature_groups()
    if not groups:  # no blocks: nothing to pack
        return [], True
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
        self.types = list(groups)
        self.slack = np.array([-len(b) % self.capacity for b in groups.values()], np.int64)
        """Type rank -> free slots on its last page (none: the type is full and never reopens,
        since slots are only taken up to what is free)."""
        model_index: dict[str, int] = {}
        for signature in groups:
            for model in sorted(signature):
                model_index.setdefault(model, len(model_index))
        self.members = {s: sum(1 << model_index[model] for model in s) for s in groups}
        """Type -> its models as a bit mask (small: one bit per model)."""
        self.members_by_rank = list(self.members.values())
        self.models = len(model_index)
        self.member_words = _words(list(self.members.values()), self.models)
        """Type rank -> its models as bit mask words, so that many candidate types are
        checked at once."""
        holds = np.unpackbits(
            self.member_words.view(np.uint8), axis=1, count=self.models, bitorder="little"
        ).astype(bool)
        rarest = np.where(holds, holds.sum(axis=0), len(self.types) + 1).argmin(axis=1)
        self.by_rarest_model = np.argsort(rarest, kind="stable")
        """Type ranks grouped by their model found in the fewest types: a subset of a
        signature has that model in the signature, so only those groups need checking."""
        self.rarest_model_starts = np.searchsorted(
            rarest[self.by_rarest_model], np.arange(self.models + 1)
        ).tolist()
        self.subset_types: dict[Signature, tuple[np.ndarray, np.ndarray, int]] = {}
        """Signature -> the open types that are subsets of it, the only ones that may take over
        readers of its blocks: their ranks (ascending), their member words, and the number of
        types closed when the list was last pruned of full types."""
        self.closed = 0
        """Types whose last page filled up or went away so far (they never reopen)."""
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
        when earlier moves took free slots of a type it chose (slots taken elsewhere only make
        other types less attractive, so its cover stays the same); it goes back if it now
        costs more.
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
        reserved = np.zeros(len(self.types), np.int64)
        """Type rank -> slots taken by the moves planned so far."""
        needs = {pair: self._need(pair[1], page_type) for pair in available}
        heap: list[tuple[int, int, Signature, Pattern, Pattern | None, int]] = [
            (1 if needs[pair] else 0, order, *pair, None, -1)
            for order, pair in enumerate(available)
        ]
        heapq.heapify(heap)
        moves: list[tuple[Signature, Pattern, Pattern, int]] = []
        last_taken: dict[Signature, int] = {}
        """Type -> the index of the last planned move that took free slots on it."""
        while excess:
            if not heap:
                return False
            cost, order, signature, pattern, new, seen = heapq.heappop(heap)
            if new is None or any(last_taken.get(t, -1) >= seen for t in new - pattern):
                need = needs[signature, pattern]
                new = self._recover(pattern, page_type, signature, need, reserved)
                if new is None:
                    continue
                if len(new - pattern) > cost:
                    heapq.heappush(
                        heap, (len(new - pattern), order, signature, pattern, new, len(moves))
                    )
                    continue
            added = new - pattern
            taken = [self.rank[t] for t in added]
            free = (self.slack[taken] - reserved[taken]).tolist()
            units = min([excess, available[signature, pattern], *free])
            moves.append((signature, pattern, new, units))
            available[signature, pattern] -= units
            reserved[taken] += units
            last_taken.update(dict.fromkeys(added, len(moves) - 1))
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

    def _recover(
        self,
        pattern: Pattern,
        dropped: Signature,
        signature: Signature,
        need: int,
        reserved: np.ndarray,
    ) -> Pattern | None:
        """``pattern`` without ``dropped``, its readers ``need`` (those the rest of ``pattern``
        does not cover) covered by types with free slots that are subsets of ``signature``
        (greedy set cover: most readers covered, then most free slots, then lowest rank)."""
        kept = pattern - {dropped}
        if not need:
            return kept
        ranks, words = self._open_subset_types(signature)
        free = self.slack[ranks] - reserved[ranks]
        free[np.searchsorted(ranks, self.rank[dropped])] = 0  # ``dropped`` is a subset too
        # One integer orders the candidates: readers covered, then free slots, then rank;
        # types without free slots fall below every usable one.
        types = len(self.types)
        scale = (self.capacity + 1) * types
        ties = np.where(free > 0, free * types - ranks, -scale * self.models)
        chosen = []
        while need:
            covered = _shared_bits(words, need)
            best = int(np.argmax(covered * scale + ties))
            if not covered[best] or not free[best]:
                return None
            rank = int(ranks[best])
            chosen.append(self.types[rank])
            need &= ~self.members_by_rank[rank]
        return kept | frozenset(chosen)

    def _open_subset_types(self, signature: Signature) -> tuple[np.ndarray, np.ndarray]:
        """The ranks (ascending) and member words of the types that are subsets of
        ``signature`` and were open recently: full types are pruned once a few more closed
        (they have no free slots, so they are never chosen anyway)."""
        entry = self.subset_types.get(signature)
        if entry is None:
            starts, mask = self.rarest_model_starts, self.members[signature]
            ranks = np.concatenate(
                [
                    self.by_rarest_model[starts[model] : starts[model + 1]]
                    for model in range(mask.bit_length())
                    if mask >> model & 1
                ]
            )
            outside = (1 << self.models) - 1 & ~mask
            ranks = np.sort(ranks[_shared_bits(self.member_words[ranks], outside) == 0])
            entry = ranks, self.member_words[ranks], -len(self.types)
        ranks, words, closed = entry
        if self.closed - closed > len(self.types) // 64:
            open_ = self.slack[ranks] > 0
            ranks, words = ranks[open_], words[open_]
            self.subset_types[signature] = ranks, words, self.closed
        return ranks, words

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
        rank = self.rank[page_type]
        was_open = self.slack[rank] > 0
        self.slack[rank] = -self.load[page_type] % self.capacity
        self.closed += bool(was_open and not self.slack[rank])


def _words(masks: list[int], bits: int) -> np.ndarray:
    """Bit masks as rows of 64-bit words (lowest word first), ``bits`` bits wide."""
    width = max(1, -(-bits // 64))
    data = b"".join(mask.to_bytes(8 * width, "little") for mask in masks)
    return np.frombuffer(data, "<u8").reshape(len(masks), width)


def _shared_bits(words: np.ndarray, mask: int) -> np.ndarray:
    """For each row of bit mask words, how many bits it shares with ``mask`` (a column at a
    time: much faster than reducing along rows)."""
    counts = np.zeros(len(words), np.int64)
    for column in range(words.shape[1]):
        if part := mask >> 64 * column & 0xFFFF_FFFF_FFFF_FFFF:
            counts += np.bitwise_count(words[:, column] & np.uint64(part))
    return counts
