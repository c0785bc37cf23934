"""Sharing groups (``weightdb.scaleout.placement``): a pure function, no Ray needed."""

import pytest

from weightdb.scaleout.placement import Placement, place_models

# Two families: a0..a2 share pages 0-9, b0..b2 share pages 100-109; each model has 2 of its own.
FAMILIES = {
    f"{family}{index}": set(range(base, base + 10)) | {base + 50 + 2 * index, base + 51 + 2 * index}
    for family, base in (("a", 0), ("b", 100))
    for index in range(3)
}
EVEN = dict.fromkeys(FAMILIES, 1.0)


def test_models_that_share_pages_land_together():
    placement = place_models(FAMILIES, EVEN, workers=2)
    assert {placement.replicas[f"a{i}"] for i in range(3)} == {placement.replicas["a0"]}
    assert {placement.replicas[f"b{i}"] for i in range(3)} == {placement.replicas["b0"]}
    assert placement.replicas["a0"] != placement.replicas["b0"]
    assert placement.loads(EVEN) == [3.0, 3.0]
    assert [len(pages) for pages in placement.worker_pages(FAMILIES)] == [16, 16]


def test_a_page_every_model_shares_does_not_pull_families_apart():
    # Every model also reads a large common embedding (pages 900-919); a0 and b0 are hot.
    pages = {name: owned | set(range(900, 920)) for name, owned in FAMILIES.items()}
    load = {**EVEN, "a0": 2.0, "b0": 2.0}
    placement = place_models(pages, load, workers=2)
    assert {placement.replicas[f"a{i}"] for i in range(3)} == {(0,)}
    assert {placement.replicas[f"b{i}"] for i in range(3)} == {(1,)}


def test_load_is_balanced_within_the_slack():
    # a0 is as hot as the rest together: one worker cannot also take its family.
    load = {**EVEN, "a0": 5.0}
    placement = place_models(FAMILIES, load, workers=2, slack=1.2)
    loads = placement.loads(load)
    assert max(loads) <= 1.2 * sum(loads) / 2
    assert sum(loads) == pytest.approx(10.0)


def test_a_model_hotter_than_one_worker_is_replicated_on_distinct_workers():
    load = {**EVEN, "a0": 30.0}
    placement = place_models(FAMILIES, load, workers=4)
    replicas = placement.replicas["a0"]
    assert len(replicas) == len(set(replicas)) == 3  # 30 / (1.2 * 35 / 4) -> 3 replicas
    assert [placement.worker_for("a0", request) for request in range(6)] == [*replicas] * 2
    assert all(len(placement.replicas[name]) == 1 for name in FAMILIES if name != "a0")


def test_page_bytes_weigh_what_a_worker_reads():
    # m1 shares one big page with m0 and one small page with m2: it belongs with m0.
    pages = {"m0": {0, 1}, "m1": {1, 2}, "m2": {2, 3}}
    placement = place_models(
        pages, dict.fromkeys(pages, 1.0), 2, page_bytes={0: 1, 1: 100, 2: 1, 3: 1}, slack=1.5
    )
    assert placement.replicas["m1"] == placement.replicas["m0"] != placement.replicas["m2"]


def test_every_model_is_placed_even_without_load():
    placement = place_models(FAMILIES, {}, workers=3)
    assert set(placement.replicas) == set(FAMILIES)
    assert all(len(workers) == 1 for workers in placement.replicas.values())


def test_one_worker_takes_everything():
    assert place_models(FAMILIES, EVEN, workers=1) == Placement(1, dict.fromkeys(FAMILIES, (0,)))


@pytest.mark.parametrize(("workers", "slack"), [(0, 1.2), (2, 0.9)])
def test_bad_arguments_are_refused(workers, slack):
    with pytest.raises(ValueError):
        place_models(FAMILIES, EVEN, workers=workers, slack=slack)
