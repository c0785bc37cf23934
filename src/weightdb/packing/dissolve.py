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
from typing import NamedTuple

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
        self.holds = np.unpackbits(
            self.member_words.view(np.uint8), axis=1, count=self.models + 1, bitorder="little"
        ).astype(bool)
        """Type rank -> model index -> whether the type holds the model; the extra last
        column is always False (the padding of every signature's own model list)."""
        holds = self.holds[:, : self.models]
        rarest = np.where(holds, holds.sum(axis=0), len(self.types) + 1).argmin(axis=1)
        self.by_rarest_model = np.argsort(rarest, kind="stable")
        """Type ranks grouped by their model found in the fewest types: a subset of a
        signature has that model in the signature, so only those groups need checking."""
        self.rarest_model_starts = np.searchsorted(
            rarest[self.by_rarest_model], np.arange(self.models + 1)
        ).tolist()
        self.subset_types: dict[Signature, _SubsetTypes] = {}
        """Signature -> the open types that are subsets of it, the only ones that may take over
        readers of its blocks (pruned of full types now and then)."""
        self.free = self.slack.copy()
        """Type rank -> free slots left for the dissolve under way: ``slack`` less the slots
        its planned moves take, and none on the type being dissolved."""
        self._lowest = -(self.capacity + 1) * len(self.types) * self.models
        self.priority = np.where(
            self.free > 0, self.free * len(self.types) - np.arange(len(self.types)), self._lowest
        )
        """Type rank -> how a greedy cover ranks the type among those covering as many
        readers: more free slots first, then lower rank; below every usable type when it has
        no free slot (kept in step with ``free``)."""
        self.closed = 0
        """Types whose last page filled up or went away so far (they never reopen)."""
        self.users: dict[Signature, dict[Signature, None]] = defaultdict(dict)
        """Page type -> the signatures with blocks on pages of that type (an ordered set, so
        that ties break the same way in every process)."""
        for signature in groups:
            self.users[signature][signature] = None
        self.uncoverable: set[tuple[Signature, Pattern, Signature]] = set()
        """(signature, pattern, page type) moves whose readers no open types could cover
        when no slots were reserved: free slots only shrink, so they never become possible."""
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
        """Empty the last page of ``page_type`` into free slots elsewhere, or change nothing."""
        excess = self.load[page_type] % self.capacity
        if not excess:
            return False
        touched = {self.rank[page_type]}
        self._set_free(self.rank[page_type], 0)
        moves = self._plan(page_type, excess, touched)
        for move in moves or ():
            self._apply(*move)
        for rank in touched:
            self._set_free(rank, int(self.slack[rank]))
        return moves is not None

    def _plan(
        self, page_type: Signature, excess: int, touched: set[int]
    ) -> list[tuple[Signature, Pattern, Pattern, int]] | None:
        """Moves that take ``excess`` blocks off ``page_type``, or None if there are none;
        the ranks of the types whose free slots they take are added to ``touched``.

        Candidate moves wait in a heap by copies added, cheapest first (ties: first seen).
        A move's cost is computed when it reaches the top, starting from a lower bound (none
        if the rest of its pattern already covers ``page_type``'s readers, else one), and again
        when earlier moves took free slots of a type it chose (slots taken elsewhere only make
        other types less attractive, so its cover stays the same); it goes back if it now
        costs more.
        """
        available = Counter(
            {
                (signature, pattern): count
                for signature in self.users[page_type]
                for pattern, count in self.patterns[signature].items()
                if page_type in pattern
                and count
                and (signature, pattern, page_type) not in self.uncoverable
            }
        )
        movable = sum(available.values())
        """Blocks that the moves not yet found impossible could still take off the page."""
        if movable < excess:
            return None
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
            cost, order, signature, pattern, new, seen = heapq.heappop(heap)
            if new is None or any(last_taken.get(t, -1) >= seen for t in new - pattern):
                new = self._recover(pattern, page_type, signature, needs[signature, pattern])
                if new is None:
                    if not moves:  # no slots reserved: impossible for good
                        self.uncoverable.add((signature, pattern, page_type))
                    movable -= available[signature, pattern]
                    if movable < excess:
                        return None
                    continue
                if len(new - pattern) > cost:
                    heapq.heappush(
                        heap, (len(new - pattern), order, signature, pattern, new, len(moves))
                    )
                    continue
            added = new - pattern
            taken = [self.rank[t] for t in added]
            free = self.free[taken].tolist()
            units = min([excess, available[signature, pattern], *free])
            moves.append((signature, pattern, new, units))
            available[signature, pattern] -= units
            for rank, slots in zip(taken, free, strict=True):
                self._set_free(rank, slots - units)
            touched.update(taken)
            last_taken.update(dict.fromkeys(added, len(moves) - 1))
            excess -= units
            movable -= units
            if available[signature, pattern]:
                heapq.heappush(heap, (cost, order, signature, pattern, new, len(moves) - 1))
        return moves

    def _need(self, pattern: Pattern, dropped: Signature) -> int:
        """The readers of ``dropped`` that the rest of ``pattern`` does not cover (bit mask)."""
        need = self.members[dropped]
        for page_type in pattern:
            if page_type != dropped:
                need &= ~self.members[page_type]
        return need

    def _recover(
        self, pattern: Pattern, dropped: Signature, signature: Signature, need: int
    ) -> Pattern | None:
        """``pattern`` without ``dropped``, its readers ``need`` (those the rest of ``pattern``
        does not cover) covered by types with free slots that are subsets of ``signature``
        (greedy set cover: most readers covered, then most free slots, then lowest rank)."""
        kept = pattern - {dropped}
        if not need:
            return kept
        subset = self._open_subset_types(signature)
        priority = self.priority[subset.ranks]
        uncovered = self._local_mask(need, subset.positions)
        scale = (self.capacity + 1) * len(self.types)
        chosen = []
        while need:
            covered = _shared_bits(subset.words, uncovered)
            best = int(np.argmax(covered * scale + priority))
            if not covered[best] or priority[best] == self._lowest:
                return None
            rank = int(subset.ranks[best])
            chosen.append(self.types[rank])
            need &= ~self.members_by_rank[rank]
            uncovered &= ~subset.words[:, best]
        return kept | frozenset(chosen)

    def _open_subset_types(self, signature: Signature) -> "_SubsetTypes":
        """The types that are subsets of ``signature`` and were open recently: full types are
        pruned once a few more closed (they have no free slots, so they are never chosen)."""
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
            ranks = np.sort(ranks[_shared_bits_of_mask(self.member_words[ranks], outside) == 0])
            positions = np.flatnonzero(self.holds[self.rank[signature]])
            positions = np.concatenate(
                [positions, np.full(-len(positions) % 64, self.models, positions.dtype)]
            )
            holds = self.holds[ranks].take(positions, axis=1)  # faster than one 2-D index
            local = np.packbits(holds, axis=1, bitorder="little")
            words = np.ascontiguousarray(local.view("<u8").T)
            entry = _SubsetTypes(ranks, words, positions, -len(self.types))
        if self.closed - entry.closed > len(self.types) // 64:
            open_ = self.slack[entry.ranks] > 0
            words = np.ascontiguousarray(entry.words[:, open_])
            entry = _SubsetTypes(entry.ranks[open_], words, entry.positions, self.closed)
            self.subset_types[signature] = entry
        return entry

    def _local_mask(self, mask: int, positions: np.ndarray) -> np.ndarray:
        """A bit mask of models as words over a signature's own models (``positions``)."""
        data = mask.to_bytes(8 * (self.models // 64 + 1), "little")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return np.packbits(bits[positions], bitorder="little").view("<u8")

    def _set_free(self, rank: int, slots: int) -> None:
        self.free[rank] = slots
        self.priority[rank] = slots * len(self.types) - rank if slots > 0 else self._lowest

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


class _SubsetTypes(NamedTuple):
    """The open types that are subsets of one signature, as of the last pruning."""

    ranks: np.ndarray
    """Their ranks, ascending."""
    words: np.ndarray
    """Column c holds their models among the signature's own as bit words (word, type)."""
    positions: np.ndarray
    """The signature's model indices, padded to whole words with an index that is never set."""
    closed: int
    """How many types had closed when the list was last pruned of full types."""


def _words(masks: list[int], bits: int) -> np.ndarray:
    """Bit masks as rows of 64-bit words (lowest word first), ``bits`` bits wide."""
    width = max(1, -(-bits // 64))
    data = b"".join(mask.to_bytes(8 * width, "little") for mask in masks)
    return np.frombuffer(data, "<u8").reshape(len(masks), width)


def _shared_bits(words: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each column of bit mask words (a row per word), how many bits it shares with
    the words of ``mask``."""
    counts = np.bitwise_count(words[0] & mask[0]).astype(np.int64)
    for row in range(1, len(words)):
        if mask[row]:
            counts += np.bitwise_count(words[row] & mask[row])
    return counts


def _shared_bits_of_mask(words: np.ndarray, mask: int) -> np.ndarray:
    """For each row of bit mask words, how many bits it shares with ``mask`` (a column at a
    time: much faster than reducing along rows)."""
    counts = np.zeros(len(words), np.int64)
    for column in range(words.shape[1]):
        if part := mask >> 64 * column & 0xFFFF_FFFF_FFFF_FFFF:
            counts += np.bitwise_count(words[:, column] & np.uint64(part))
    return counts
