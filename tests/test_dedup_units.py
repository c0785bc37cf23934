"""The parts the deduplication methods are built from, on small exact inputs: candidate indexes
(lsh), block order (magnitude), similarity measures, and the baselines' matchers."""

from pathlib import Path

import numpy as np
import pytest

from weightdb.dedup.baselines import MistiqueMatcher, pairwise_matcher
from weightdb.dedup.lsh import L2LSH, AllBlocks, MinHashLSH
from weightdb.dedup.magnitude import netsdb_score, relative_damage
from weightdb.dedup.netsdb import NetsdbParams
from weightdb.dedup.similarity import element_fraction, jaccard, relative_distance
from weightdb.dedup.workspace import Workspace

# -- similarity ----------------------------------------------------------------------------


def test_element_fraction_counts_elements_within_the_absolute_tolerance():
    a = np.array([0.0, 0.005, 0.02, 1.0, -3.0])
    b = np.array([0.0, 0.0, 0.0, 1.01, -3.0])
    assert element_fraction(a, b, tolerance=0.01) == 0.6  # 0.02 and 1.0 vs 1.01 differ
    assert element_fraction(a, b, tolerance=0.0) == 0.4
    # blind to scale: tiny blocks always match
    assert element_fraction(a * 1e-4, np.zeros(5), tolerance=0.01) == 1.0


def test_relative_distance_divides_by_the_larger_norm():
    assert relative_distance(np.array([3.0, 4.0]), np.zeros(2)) == 1.0
    assert relative_distance(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert relative_distance(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(
        np.sqrt(5) / 2
    )
    near = relative_distance(np.array([30.0, 40.0]), np.array([30.0, 41.0]))
    assert near == pytest.approx(1 / np.hypot(30.0, 41.0))
    assert relative_distance(np.zeros(3), np.zeros(3)) == 0.0


def test_jaccard_compares_the_sets_of_values():
    assert jaccard(np.array([1, 2, 2, 3]), np.array([2, 3, 4])) == 0.5
    assert jaccard(np.array([[1, 1], [2, 2]]), np.array([2, 1])) == 1.0
    assert jaccard(np.array([1]), np.array([2])) == 0.0
    assert jaccard(np.array([]), np.array([])) == 1.0


# -- magnitude -----------------------------------------------------------------------------


def test_netsdb_score_is_the_normalised_third_quartile_minus_the_layer_size():
    block = np.array([[0.0, 1.0], [2.0, 3.0]])  # 75th percentile 2.25
    assert netsdb_score(block, layer_min=0.0, layer_max=9.0, layer_size=100) == 0.25 - 100
    assert netsdb_score(block, layer_min=-1.0, layer_max=1.0, layer_size=4) == 3.25 / 2 - 4
    # signed values: a block of large negative weights scores lowest, so it is visited first
    assert netsdb_score(-block, -3.0, 3.0, 4) < netsdb_score(block * 0.1, -3.0, 3.0, 4)
    # a constant layer has no spread: the quartile is not normalised
    assert netsdb_score(np.full((2, 2), 5.0), 5.0, 5.0, 4) == 0.0 - 4


def test_relative_damage_is_the_rms_change_over_the_layers_mean_absolute_weight():
    block = np.array([3.0, 4.0])
    assert relative_damage(block, np.zeros(2), layer_mean_abs=2.0) == pytest.approx(
        np.sqrt(12.5) / 2
    )
    assert relative_damage(block, block, layer_mean_abs=2.0) == 0.0
    assert relative_damage(-block, np.zeros(2), 2.0) == relative_damage(block, np.zeros(2), 2.0)


# -- lsh -----------------------------------------------------------------------------------


def test_l2lsh_finds_near_vectors_and_not_far_ones():
    index = L2LSH(dim=8, r=1.0, bands=4, rows=3, seed=0)
    base = np.linspace(-1, 1, 8)
    index.insert("base", base)
    index.insert("far", base + 50.0)
    assert len(index.keys(base)) == 4 and all(len(key) == 1 + 3 for key in index.keys(base))
    assert index.query(base.reshape(2, 4)) == {"base"}  # blocks are hashed flattened
    assert index.query(base + 1e-9) == {"base"}
    assert index.query(base + 50.0) == {"far"}
    assert index.query(base - 50.0) == set()


def test_l2lsh_hashes_are_fixed_by_the_seed():
    item = np.arange(6.0)
    same = L2LSH(6, 0.5, 2, 2, seed=3).hashes(item)
    assert np.array_equal(same, L2LSH(6, 0.5, 2, 2, seed=3).hashes(item))
    assert not np.array_equal(same, L2LSH(6, 0.5, 2, 2, seed=4).hashes(item))


def test_minhash_needs_bands_that_divide_the_permutations():
    with pytest.raises(ValueError, match="bands must divide permutations"):
        MinHashLSH(permutations=10, bands=3, seed=0)


def test_minhash_depends_on_the_set_of_values_only():
    index = MinHashLSH(permutations=12, bands=4, seed=0)
    values = np.array([5, 3, 3, 9, 5])
    assert np.array_equal(index.hashes(values), index.hashes(np.array([9, 5, 3])))
    assert len(index.keys(values)) == 4 and all(len(key) == 1 + 3 for key in index.keys(values))


def test_minhash_signatures_agree_about_as_often_as_the_sets_overlap():
    # Jaccard({0..99}, {1..100}) = 99/101: a MinHash signature agrees on ~98% of 48 hashes.
    # (Hashes that keep the order of values agree only when the minima are equal, here never.)
    index = MinHashLSH(permutations=48, bands=24, seed=0)
    agree = index.hashes(np.arange(0, 100)) == index.hashes(np.arange(1, 101))
    assert agree.mean() >= 0.8
    disjoint = index.hashes(np.arange(0, 100)) == index.hashes(np.arange(1000, 1100))
    assert not disjoint.any()


def test_minhash_index_finds_a_set_that_differs_in_its_smallest_value():
    index = MinHashLSH(permutations=48, bands=24, seed=0)
    index.insert("a", np.arange(0, 100))
    index.insert("other", np.arange(5000, 5100))
    assert index.query(np.arange(1, 101)) == {"a"}


def test_all_blocks_are_candidates_of_every_query():
    index = AllBlocks()
    for key in ("a", "b"):
        index.insert(key, np.zeros(2))
    found = index.query(np.ones(3))
    assert found == {"a", "b"}
    found.clear()  # the caller's copy
    assert index.query(np.ones(3)) == {"a", "b"}


# -- baselines -----------------------------------------------------------------------------


@pytest.fixture
def three_models(db, tmp_path: Path) -> tuple[Workspace, dict[str, int]]:
    """Models a, b (within 2e-5 of a: mostly the same value bins) and c (unrelated), one
    16 x 8 block each."""
    rng = np.random.default_rng(3)
    a = rng.uniform(-0.5, 0.5, (16, 8)).astype(np.float32)
    weights = {
        "a": a,
        "b": a + rng.uniform(-2e-5, 2e-5, a.shape).astype(np.float32),
        "c": rng.uniform(-0.5, 0.5, a.shape).astype(np.float32),
    }
    for name, w in weights.items():
        np.savez(tmp_path / f"{name}.npz", w=w)
        db.import_model(tmp_path / f"{name}.npz", name)
    workspace = Workspace(db.store, list(weights))
    blocks = {name: workspace.current[workspace.positions(name)[0]] for name in weights}
    assert len(set(blocks.values())) == 3
    return workspace, blocks


def test_pairwise_matches_the_block_whose_elements_are_within_tolerance(three_models):
    workspace, blocks = three_models
    matcher = pairwise_matcher(workspace, NetsdbParams())
    matcher.add(blocks["a"])
    assert matcher.best(blocks["a"]) is None  # never itself
    assert matcher.best(blocks["b"]) == (blocks["a"], 1.0)
    assert matcher.best(blocks["c"]) is None  # below the 0.7 threshold


def test_mistique_matches_the_block_with_most_shared_discretised_values(three_models):
    workspace, blocks = three_models
    matcher = MistiqueMatcher(workspace)
    for name in ("a", "c"):
        matcher.add(blocks[name])
    bins = np.linspace(-1.0, 1.0, 10_000)
    values = {name: np.digitize(workspace.array(block), bins) for name, block in blocks.items()}
    assert matcher.best(blocks["b"]) == (blocks["a"], jaccard(values["b"], values["a"]))
    assert jaccard(values["b"], values["a"]) > jaccard(values["b"], values["c"])
