"""Our default packer (``dissolve``): Greedy-1, then dissolve partly filled pages.

Start from Greedy-1, where each signature has pages of its own type (see ``patterns``): no
copies, but every signature whose size is not a multiple of l leaves a partly filled last page.
Then *dissolve* such last pages, one type at a time: move the page's few blocks into free slots
of pages of other types that together cover the block's readers, copying the block if one type
does not cover them all. A dissolve removes one page, lowers the pages read by every model of
that type and creates no page, so the search only improves.

Pages whose readers are served most often are dissolved first, so when free slots run out the
popular models are the ones that read fewer pages. Among covers, fewer copies win.

Lineages of fine-tunes have thousands of signatures, so the search avoids scanning them: the
types that are subsets of each signature (the only ones that may take over its blocks'
readers) are found for all signatures at once, keeping those still open when a list is first
needed (free slots never reopen); a greedy cover scores a list at once with numpy over bit-mask
words of the types' models, reading free slots and tie-break priorities kept per type. A
candidate move is costed only when it reaches the top of a heap, and costed again only when a
later move took slots of a type it chose (slots taken elsewhere only make other types less
attractive); a dissolve gives up once the moves not found impossible hold fewer blocks than
its page. Each type is tried once: free slots only shrink, and trying again the types whose
blocks changed pattern never dissolved a page more, on lineages, the netsDB instances or
thousands of small random ones, while it took a tenth of the time. Each greedy cover still
grows with the number of subset types, so time grows faster than linearly in signatures; since
every dissolve keeps the layout valid and saves a page, a time limit stops the search with the
best layout so far.
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
    with the best layout so far). ``progress`` counts page types tried of those to try."""
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
        frequency = {model: instance.frequency(model) for model in set().union(*groups)}
        self.weight = {
            signature: math.fsum(map(frequency.__getitem__, signature)) for signature in groups
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
        names = sorted(set().union(*groups))
        index = {name: bit for bit, name in enumerate(names)}
        holds = np.zeros((len(groups), len(names)), bool)
        """Type rank -> model -> whether the type holds the model."""
        holds[
            np.repeat(np.arange(len(groups)), [len(s) for s in groups]),
            [index[model] for signature in groups for model in signature],
        ] = True
        holds = holds[:, _model_order(holds, [len(blocks) for blocks in groups.values()])]
        self.models = len(names)
        self.member_words = _bit_words(holds)
        """Type rank -> its models as bit mask words, so that many candidate types are
        checked at once."""
        self.members_by_rank = [
            int.from_bytes(row.tobytes(), "little") for row in self.member_words
        ]
        self.members = dict(zip(groups, self.members_by_rank, strict=True))
        """Type -> its models as a bit mask (small: one bit per model)."""
        self.member_columns = np.ascontiguousarray(self.member_words.T)
        """Word -> type rank -> that word of the type's bit mask (a row per word: counting
        shared bits a word at a time is much faster than along rows)."""
        self.subsets = _subsets(holds, self.member_columns)
        """Type rank -> the ranks of the types that are subsets of it (itself included)."""
        self.subset_types: dict[Signature, tuple[np.ndarray, np.ndarray]] = {}
        """Signature -> the types that are subsets of it and were open when its blocks first
        needed a cover (the only ones that may take over their readers): ranks, member words."""
        self.free = self.slack.copy()
        """Type rank -> free slots left for the dissolve under way: ``slack`` less the slots
        its planned moves take, and none on the type being dissolved."""
        self._scale = np.int64((self.capacity + 1) * len(self.types))
        """Readers covered weigh more than any difference in priority."""
        self._lowest = -int(self._scale) * self.models
        self._uncovering = self.capacity * len(self.types)
        """A cover's best score at most this: the type covers no reader or has no free slot."""
        self.priority = np.where(
            self.free > 0, self.free * len(self.types) - np.arange(len(self.types)), self._lowest
        )
        """Type rank -> how a greedy cover ranks the type among those covering as many
        readers: more free slots first, then lower rank; below every usable type when it has
        no free slot (kept in step with ``free``)."""
        self.users: dict[Signature, dict[Signature, None]] = defaultdict(dict)
        """Page type -> the signatures with blocks on pages of that type (an ordered set, so
        that ties break the same way in every process)."""
        for signature in groups:
            self.users[signature][signature] = None

    def run(self, deadline: float | None, progress: Progress) -> bool:
        """Try every type once (True), or stop when the deadline passes (False)."""
        for page_type in sorted(self.load, key=self._dissolve_order):
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._dissolve(page_type)
            progress(1, len(self.types))
        return True

    def assignment(self) -> dict[Signature, list[tuple[Pattern, int]]]:
        return {signature: list(counts.items()) for signature, counts in self.patterns.items()}

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
            }
        )
        movable = self.load[page_type]
        """Blocks that the moves not yet found impossible could still take off the page."""
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
            if new is None or (
                last_taken and any(last_taken.get(t, -1) >= seen for t in new - pattern)
            ):
                new = self._recover(pattern, page_type, signature, needs[signature, pattern])
                if new is None:
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
        if len(pattern) == 1:  # stored once, on ``dropped``
            return need
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
        if not need:
            return pattern - {dropped}
        ranks, words = self._open_subset_types(signature)
        priority = self.priority[ranks]
        chosen = []
        while need:
            score = _shared_bits(words, need, self._scale)
            score += priority
            best = int(score.argmax())
            if score[best] <= self._uncovering:  # covers no reader, or has no free slot
                return None
            rank = int(ranks[best])
            chosen.append(self.types[rank])
            need &= ~self.members_by_rank[rank]
        return pattern - {dropped} | frozenset(chosen)

    def _open_subset_types(self, signature: Signature) -> tuple[np.ndarray, np.ndarray]:
        """The ranks and member words (a row per word) of the types that are subsets of
        ``signature`` and were open when first asked: types that close later stay in the
        list (they have no free slots, so they are never chosen), since pruning them again
        cost more than scoring them."""
        entry = self.subset_types.get(signature)
        if entry is None:
            ranks = self.subsets[self.rank[signature]]
            ranks = ranks[self.slack[ranks] > 0]
            entry = self.subset_types[signature] = ranks, self.member_columns[:, ranks]
        return entry

    def _set_free(self, rank: int, slots: int) -> None:
        self.free[rank] = slots
        self.priority[rank] = slots * len(self.types) - rank if slots > 0 else self._lowest

    def _apply(self, signature: Signature, old: Pattern, new: Pattern, units: int) -> None:
        patterns = self.patterns[signature]
        patterns[old] -= units
        if not patterns[old]:  # most patterns empty soon: planning then skips them
            del patterns[old]
        patterns[new] += units
        for page_type in old - new:
            self._add_load(page_type, -units)
        for page_type in new - old:  # each type's own users: the order does not matter
            self._add_load(page_type, units)
            self.users[page_type][signature] = None

    def _add_load(self, page_type: Signature, units: int) -> None:
        """Change a type's load; once its last page is full (or gone) it never reopens."""
        self.load[page_type] += units
        self.slack[self.rank[page_type]] = -self.load[page_type] % self.capacity


def _model_order(holds: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The models (columns of ``holds``, types by models; ``sizes``: blocks per type) in the
    order to number them: models that share many blocks get nearby bits, so that a
    signature's bits span few 64-bit words and covers skip the others.

    The order walks, depth first, a maximum spanning tree of blocks shared between models: on
    a lineage, close to the tree of fine-tunes, whose subtrees then take consecutive bits.
    With many more models or types (the matrices would be large) the order stays as given.
    """
    types, models = holds.shape
    if models > 1024 or types * models > 1 << 24:
        return np.arange(models)
    held = holds.astype(np.float32)
    shared = (held * np.array(sizes, np.float32)[:, None]).T @ held  # exact below 2**24
    start = int(np.argmax(np.diag(shared)))
    np.fill_diagonal(shared, -1.0)
    attached = np.zeros(models, bool)
    attached[start] = True
    closest, parent = shared[start].copy(), np.full(models, start)
    children: list[list[int]] = [[] for _ in range(models)]
    for _ in range(models - 1):  # Prim: attach the model sharing the most with the tree
        model = int(np.argmax(np.where(attached, -np.inf, closest)))
        attached[model] = True
        children[parent[model]].append(model)
        closer = (shared[model] > closest) & ~attached
        closest[closer], parent[closer] = shared[model][closer], model
    order, stack = [], [start]
    while stack:
        model = stack.pop()
        order.append(model)
        stack.extend(reversed(children[model]))
    return np.array(order)


def _subsets(holds: np.ndarray, columns: np.ndarray) -> list[np.ndarray]:
    """Type rank -> the ranks of the types that are its subsets (``holds``: type -> model ->
    whether the type has it; ``columns``: the types' bit mask words, a row per word).

    A subset of a type holds its own rarest model (the one found in the fewest types), and
    that model is in the type, so each group of types with one rarest model is checked only
    against the types that hold the model, all pairs at once.
    """
    types, models = holds.shape
    rarest = np.where(holds, holds.sum(axis=0), types + 1).argmin(axis=1)
    parts, wholes = [], []
    for model in range(models):
        parts_here = np.flatnonzero(rarest == model)
        if not len(parts_here):
            continue
        holders = np.flatnonzero(holds[:, model])
        part_words = [(row[parts_here, None], row) for row in columns if row[parts_here].any()]
        step = max(1, (1 << 20) // len(parts_here))  # pairs checked at once: a few MB
        for start in range(0, len(holders), step):
            chunk = holders[start : start + step]
            outside = np.zeros((len(parts_here), len(chunk)), np.uint64)
            shared = np.empty_like(outside)
            for part_word, row in part_words:
                outside |= np.bitwise_and(part_word, ~row[chunk], out=shared)
            part, whole = np.nonzero(outside == 0)
            parts.append(parts_here[part])
            wholes.append(chunk[whole])
    part, whole = np.concatenate(parts), np.concatenate(wholes)
    # stable sorts of 16-bit keys are radix sorts: several times faster
    order = np.argsort(whole.astype(np.uint16) if types <= 1 << 16 else whole, kind="stable")
    bounds = np.searchsorted(whole[order], np.arange(types + 1)).tolist()
    part = part[order]
    return [part[bounds[rank] : bounds[rank + 1]] for rank in range(types)]


def _bit_words(bits: np.ndarray) -> np.ndarray:
    """Rows of booleans as rows of 64-bit words (lowest bit and word first)."""
    packed = np.packbits(bits, axis=1, bitorder="little")
    width = max(1, -(-bits.shape[1] // 64))
    padded = np.zeros((len(bits), 8 * width), np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view("<u8")


def _shared_bits(words: np.ndarray, mask: int, weight: np.int64) -> np.ndarray:
    """For each column of bit mask words (a row per word, lowest first), ``weight`` times the
    bits it shares with ``mask``, which must share some (zero words of ``mask`` are skipped)."""
    counts = None
    for row in range(len(words)):
        if part := mask >> 64 * row & 0xFFFF_FFFF_FFFF_FFFF:
            shared = np.bitwise_count(words[row] & np.uint64(part)) * weight
            if counts is None:
                counts = shared
            else:
                counts += shared
    assert counts is not None, "an empty mask shares no bits"
    return counts
