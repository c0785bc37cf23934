"""The baselines, run through netsDB's sequential loop with another candidate search.

- pairwise: every stored block of the same shape is a candidate (no LSH), netsDB similarity;
  the artifact's "enhanced pairwise".
- mistique: MISTIQUE approximate matching as the artifact runs it (``run_baseline.py``):
  values discretised into 10,000 bins over [-1, 1], MinHash with 48 permutations banded for a
  Jaccard threshold of about 0.2 (24 bands of 2), and the candidate with the highest exact
  Jaccard similarity of the discretised values accepted whatever its value.
"""

import numpy as np

from weightdb.dedup.lsh import AllBlocks, MinHashLSH
from weightdb.dedup.netsdb import NetsdbParams, ToleranceMatcher
from weightdb.dedup.similarity import jaccard
from weightdb.dedup.workspace import Workspace

_BINS = np.linspace(-1.0, 1.0, 10_000)


def pairwise_matcher(workspace: Workspace, params: NetsdbParams) -> ToleranceMatcher:
    return ToleranceMatcher(workspace, params, lambda dim: AllBlocks())


class MistiqueMatcher:
    def __init__(self, workspace: Workspace, seed: int = 0) -> None:
        self.workspace, self.seed = workspace, seed
        self.indexes: dict[tuple, MinHashLSH] = {}
        self._discrete: dict[int, np.ndarray] = {}

    def _values(self, block_id: int) -> np.ndarray:
        if block_id not in self._discrete:
            self._discrete[block_id] = np.digitize(self.workspace.array(block_id), _BINS)
        return self._discrete[block_id]

    def _index(self, block_id: int) -> MinHashLSH:
        key = self.workspace.blocks[block_id].shape_key
        if key not in self.indexes:
            self.indexes[key] = MinHashLSH(permutations=48, bands=24, seed=self.seed)
        return self.indexes[key]

    def add(self, block_id: int) -> None:
        self._index(block_id).insert(block_id, self._values(block_id))

    def best(self, block_id: int) -> tuple[int, float] | None:
        query = self._values(block_id)
        best, best_similarity = None, 0.0
        for candidate in sorted(self._index(block_id).query(query) - {block_id}):
            similarity = jaccard(query, self._values(candidate))
            if similarity > best_similarity:
                best, best_similarity = candidate, similarity
        return None if best is None else (best, best_similarity)
