"""Candidate indexes: which stored blocks might be close to a query block.

``L2LSH`` is the p-stable scheme of netsDB: h(v) = floor((a.v + b) / r) with a ~ N(0, I) and
b ~ U[0, r), ``rows`` hashes concatenated per band, and a collision in any band makes a
candidate. ``MinHashLSH`` is MISTIQUE's: MinHash signatures over the set of discretised values,
banded the same way. ``AllBlocks`` is the pairwise baseline: every block is a candidate.
"""

from collections import defaultdict
from collections.abc import Hashable

import numpy as np

_PRIME = 4_294_967_291
"""The largest prime below 2**32: a product of two residues fits in 64 bits, so the universal
hash ``(a * x + b) mod p`` wraps as it must (with a prime far above ``a * x`` it would keep
the values' order, and every MinHash would be the smallest value)."""


class _BandedLSH:
    """``bands`` bands of ``rows`` hashes each; a key collides with another in any band."""

    def __init__(self, bands: int, rows: int) -> None:
        self.bands, self.rows = bands, rows
        self.table: dict[tuple, set[Hashable]] = defaultdict(set)

    def hashes(self, item: np.ndarray) -> np.ndarray:
        """``bands * rows`` hash values of ``item``."""
        raise NotImplementedError

    def keys(self, item: np.ndarray) -> list[tuple]:
        hashes = self.hashes(item)
        return [
            (band, *hashes[band * self.rows : (band + 1) * self.rows]) for band in range(self.bands)
        ]

    def insert(self, key: Hashable, item: np.ndarray) -> None:
        for band_key in self.keys(item):
            self.table[band_key].add(key)

    def query(self, item: np.ndarray) -> set[Hashable]:
        found: set[Hashable] = set()
        for band_key in self.keys(item):
            found |= self.table.get(band_key, set())
        return found


class L2LSH(_BandedLSH):
    def __init__(self, dim: int, r: float, bands: int, rows: int, seed: int) -> None:
        super().__init__(bands, rows)
        rng = np.random.default_rng(seed)
        self.r = r
        self.a = rng.standard_normal((bands * rows, dim))
        self.b = rng.uniform(0.0, r, size=bands * rows)

    def hashes(self, item: np.ndarray) -> np.ndarray:
        return np.floor((self.a @ item.ravel() + self.b) / self.r).astype(np.int64)


class MinHashLSH(_BandedLSH):
    def __init__(self, permutations: int, bands: int, seed: int) -> None:
        if permutations % bands:
            raise ValueError("bands must divide permutations")
        super().__init__(bands, permutations // bands)
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=(permutations, 1), dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=(permutations, 1), dtype=np.uint64)

    def hashes(self, item: np.ndarray) -> np.ndarray:
        """MinHash of the set of (non-negative integer) values."""
        elements = np.unique(item).astype(np.uint64).reshape(1, -1) % np.uint64(_PRIME)
        return ((self.a * elements + self.b) % np.uint64(_PRIME)).min(axis=1)


class AllBlocks:
    def __init__(self) -> None:
        self.keys: set[Hashable] = set()

    def insert(self, key: Hashable, vector: np.ndarray) -> None:
        self.keys.add(key)

    def query(self, vector: np.ndarray) -> set[Hashable]:
        return set(self.keys)
