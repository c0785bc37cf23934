"""Candidate indexes: which stored blocks might be close to a query block.

``L2LSH`` is the p-stable scheme of netsDB: h(v) = floor((a.v + b) / r) with a ~ N(0, I) and
b ~ U[0, r), ``rows`` hashes concatenated per band, and a collision in any band makes a
candidate. ``MinHashLSH`` is MISTIQUE's: MinHash signatures over the set of discretised values,
banded the same way. ``AllBlocks`` is the pairwise baseline: every block is a candidate.
"""

from collections import defaultdict
from collections.abc import Hashable

import numpy as np

_PRIME = (1 << 61) - 1


class L2LSH:
    def __init__(self, dim: int, r: float, bands: int, rows: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.r, self.bands, self.rows = r, bands, rows
        self.a = rng.standard_normal((bands * rows, dim))
        self.b = rng.uniform(0.0, r, size=bands * rows)
        self.table: dict[tuple, set[Hashable]] = defaultdict(set)

    def keys(self, vector: np.ndarray) -> list[tuple]:
        hashes = np.floor((self.a @ vector.ravel() + self.b) / self.r).astype(np.int64)
        return [
            (band, *hashes[band * self.rows : (band + 1) * self.rows]) for band in range(self.bands)
        ]

    def insert(self, key: Hashable, vector: np.ndarray) -> None:
        for band_key in self.keys(vector):
            self.table[band_key].add(key)

    def query(self, vector: np.ndarray) -> set[Hashable]:
        found: set[Hashable] = set()
        for band_key in self.keys(vector):
            found |= self.table.get(band_key, set())
        return found


class MinHashLSH:
    def __init__(self, permutations: int, bands: int, seed: int) -> None:
        if permutations % bands:
            raise ValueError("bands must divide permutations")
        rng = np.random.default_rng(seed)
        self.rows, self.bands = permutations // bands, bands
        self.a = rng.integers(1, 1 << 31, size=(permutations, 1), dtype=np.uint64)
        self.b = rng.integers(0, 1 << 31, size=(permutations, 1), dtype=np.uint64)
        self.table: dict[tuple, set[Hashable]] = defaultdict(set)

    def signature(self, values: np.ndarray) -> np.ndarray:
        """MinHash of the set of (non-negative integer) values."""
        elements = np.unique(values).astype(np.uint64).reshape(1, -1)
        return ((self.a * elements + self.b) % np.uint64(_PRIME)).min(axis=1)

    def keys(self, values: np.ndarray) -> list[tuple]:
        signature = self.signature(values)
        return [
            (band, *signature[band * self.rows : (band + 1) * self.rows])
            for band in range(self.bands)
        ]

    def insert(self, key: Hashable, values: np.ndarray) -> None:
        for band_key in self.keys(values):
            self.table[band_key].add(key)

    def query(self, values: np.ndarray) -> set[Hashable]:
        found: set[Hashable] = set()
        for band_key in self.keys(values):
            found |= self.table.get(band_key, set())
        return found


class AllBlocks:
    def __init__(self) -> None:
        self.keys: set[Hashable] = set()

    def insert(self, key: Hashable, vector: np.ndarray) -> None:
        self.keys.add(key)

    def query(self, vector: np.ndarray) -> set[Hashable]:
        return set(self.keys)
