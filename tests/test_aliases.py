"""Algorithms are named by technique; "weightdb", their old shared name, still selects each
default: in config.toml files, in the Python API and on the command line."""

from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL

import weightdb
from weightdb.dedup import METHODS
from weightdb.packing import ALGORITHMS, DEFAULT_ALGORITHM, Instance, solve
from weightdb.registry import Registry
from weightdb.storage.policies import DEFAULT_POLICY, POLICIES, make_policy
from weightdb.storage.policies.expected_reread import ExpectedRereadPolicy


def test_each_default_has_its_technique_name_and_the_old_alias() -> None:
    assert (DEFAULT_ALGORITHM, DEFAULT_POLICY) == ("dissolve", "expected-reread")
    for registry, default in ((ALGORITHMS, "dissolve"), (POLICIES, "expected-reread")):
        assert "weightdb" in registry and registry["weightdb"] is registry[default]
        assert "weightdb" not in list(registry)
    assert "weightdb" in METHODS and "weightdb" not in list(METHODS)
    assert METHODS.canonical("weightdb") == "group-test"


def test_a_registry_lists_each_entry_once_and_rejects_dangling_aliases() -> None:
    registry = Registry({"a": 1, "b": 2}, aliases={"old": "b"})
    assert list(registry) == ["a", "b"] and len(registry) == 2
    assert registry["old"] == 2 and registry.canonical("old") == "b"
    assert list(registry.extended({"c": 3})) == ["a", "b", "c"]
    assert registry.extended({"c": 3})["old"] == 2
    with pytest.raises(KeyError):
        registry["c"]
    with pytest.raises(ValueError, match="aliases of unknown entries: gone"):
        Registry({"a": 1}, aliases={"old": "gone"})


def test_an_old_config_naming_the_weightdb_policy_opens(tmp_path: Path) -> None:
    path = tmp_path / "db"
    weightdb.connect(path, settings=SMALL).close()
    config = path / "config.toml"
    text = config.read_text()
    assert 'policy = "expected-reread"' in text
    config.write_text(text.replace('policy = "expected-reread"', 'policy = "weightdb"'))
    with weightdb.connect(path) as db:
        assert db.settings.policy == "weightdb"
        assert type(db.pool.policy) is ExpectedRereadPolicy
    assert type(make_policy("weightdb")) is ExpectedRereadPolicy


def test_packing_with_weightdb_runs_dissolve() -> None:
    instance = Instance.from_models({"a": [1, 2, 3], "b": [2, 3, 4], "c": [3, 4, 5]}, 2)
    old, new = solve(instance, "weightdb"), solve(instance, "dissolve")
    assert old.algorithm == new.algorithm == "dissolve"
    assert old.layout.pages == new.layout.pages and old.search_finished


def test_dedup_with_weightdb_runs_group_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with weightdb.connect(tmp_path / "db", settings=SMALL) as db:
        weights = rng.standard_normal((16, 8)).astype(np.float32)
        db.import_arrays("a", {"w": weights})
        db.import_arrays("b", {"w": weights})
        report = db.deduplicate(method="weightdb")
    assert report.method == "group-test" and report.exact_only
