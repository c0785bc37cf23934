"""The netsDB method (VLDB 2022), as its artifact runs it, and the sequential loop it shares
with the MISTIQUE and pairwise baselines.

Models are visited in import order; the blocks of the models visited before form the index
(the first model only seeds it). A model's blocks are visited in ascending netsDB magnitude
(large layers first; tensors of a single block are skipped, as in the artifact), each is
replaced by its most similar indexed candidate if the similarity reaches the threshold, and the
model is measured every ``eval_step`` replacements: past the budget, the replacements since the
last good check are undone and the model is done.

Defaults are the artifact's (asu-cactus/netsdb, model-inference/deduplication/indexing:
``deduplicate_model`` fp=0.01, sim=0.7, eval_step=5; ``L2LSH(r=0.09, num_k=1, num_l=90,
seed=0)``). The artifact measures on its test set; so does this method by default
(``decision_split="test"``), which is one of the things the group-test method changes.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from weightdb.dedup.gate import Gate
from weightdb.dedup.lsh import L2LSH
from weightdb.dedup.magnitude import netsdb_score
from weightdb.dedup.plan import Plan
from weightdb.dedup.similarity import element_fraction
from weightdb.dedup.workspace import Position, Workspace
from weightdb.progress import Progress


class Matcher(Protocol):
    def add(self, block_id: int) -> None: ...

    def best(self, block_id: int) -> tuple[int, float] | None:
        """The most similar indexed block (other than ``block_id``) that qualifies."""
        ...


@dataclass(frozen=True)
class NetsdbParams:
    tolerance: float = 0.01  # artifact fp: elements this close (absolute) count as equal
    threshold: float = 0.7  # artifact sim: fraction of equal elements to accept a candidate
    eval_step: int = 5
    lsh_r: float = 0.09
    lsh_bands: int = 90  # num_l
    lsh_rows: int = 1  # num_k
    seed: int = 0
    decision_split: str = "test"


class ToleranceMatcher:
    """Candidates from ``make_index`` per block shape, judged by the fraction of elements within
    an absolute tolerance (netsDB; with an index of all blocks, the pairwise baseline)."""

    def __init__(self, workspace: Workspace, params: NetsdbParams, make_index) -> None:
        self.workspace, self.params, self.make_index = workspace, params, make_index
        self.indexes: dict[tuple, object] = {}

    def _index(self, block_id: int):
        block = self.workspace.blocks[block_id]
        if block.shape_key not in self.indexes:
            self.indexes[block.shape_key] = self.make_index(block.rows * block.cols)
        return self.indexes[block.shape_key]

    def add(self, block_id: int) -> None:
        self._index(block_id).insert(block_id, self.workspace.array(block_id))

    def best(self, block_id: int) -> tuple[int, float] | None:
        query = self.workspace.array(block_id)
        best, best_similarity = None, 0.0
        for candidate in sorted(self._index(block_id).query(query) - {block_id}):
            similarity = element_fraction(
                query, self.workspace.array(candidate), self.params.tolerance
            )
            if similarity > best_similarity and similarity >= self.params.threshold:
                best, best_similarity = candidate, similarity
        return None if best is None else (best, best_similarity)


def netsdb_matcher(workspace: Workspace, params: NetsdbParams) -> ToleranceMatcher:
    def index(dim: int) -> L2LSH:
        return L2LSH(dim, params.lsh_r, params.lsh_bands, params.lsh_rows, params.seed)

    return ToleranceMatcher(workspace, params, index)


def run_sequential(
    plan: Plan, gate: Gate, matcher: Matcher, eval_step: int, progress: Progress
) -> None:
    workspace = plan.workspace
    for model in workspace.models:
        if model in gate.evaluators:
            _deduplicate_model(plan, gate, matcher, model, eval_step)
        for block_id in sorted({workspace.current[p] for p in workspace.positions(model)}):
            matcher.add(block_id)
        progress(1, len(workspace.models), "planning")


def _deduplicate_model(plan: Plan, gate: Gate, matcher: Matcher, model: str, step: int) -> None:
    gate.baseline(model)
    good, pending = plan.mark(), 0
    for position in _magnitude_order(plan.workspace, model):
        found = matcher.best(plan.workspace.current[position])
        if found is not None:
            plan.replace(position, *found)
            pending += 1
        if pending == step:
            if not gate.passes([model]):
                plan.undo_to(good)
                return
            good, pending = plan.mark(), 0
    if pending and not gate.passes([model]):
        plan.undo_to(good)


def _magnitude_order(workspace: Workspace, model: str) -> list[Position]:
    by_tensor: dict[int, list[Position]] = defaultdict(list)
    for position in workspace.positions(model):
        by_tensor[position.tensor_id].append(position)
    scored = []
    for positions in by_tensor.values():
        if len(positions) < 2:
            continue  # the artifact never deduplicates a layer of one block
        arrays = [workspace.array(workspace.current[p]) for p in positions]
        low = min(float(a.min()) for a in arrays)
        high = max(float(a.max()) for a in arrays)
        size = sum(a.size for a in arrays)
        scored += [
            (netsdb_score(a, low, high, size), p) for a, p in zip(arrays, positions, strict=True)
        ]
    scored.sort(key=lambda item: (item[0], item[1].tensor_id, item[1].row, item[1].col))
    return [p for _, p in scored]
