"""`weightdb demo --scale small` prints every section with numbers that hold together."""

import os
import re
import subprocess
import sys

import pytest

from weightdb.units import parse_size

SIZE = r"(\d+(?:\.\d+)? (?:B|KiB|MiB|GiB))"
NUMBER = r"(\d+(?:\.\d+)?)"


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weightdb", "demo", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        timeout=600,
    )


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> str:
    result = demo("--scale", "small", "-o", str(tmp_path_factory.mktemp("demo") / "db"))
    assert result.returncode == 0, result.stderr
    return result.stdout


def section(printed: str, number: int) -> str:
    """The text of section ``number``, from its heading to the next one."""
    parts = re.split(r"^=+ (\d)\. ", printed, flags=re.MULTILINE)
    headed = dict(zip(parts[1::2], parts[2::2], strict=True))
    return headed[str(number)]


def test_storage_tiers_store_at_most_what_they_were_given(printed):
    storage = section(printed, 1)
    logical = [parse_size(s) for s in re.findall(rf"^  logical +{SIZE}", storage, re.MULTILINE)]
    tiers = re.findall(
        rf"^  (exact|\+ lossless|\+ approximate) +{SIZE} +{NUMBER}x", storage, re.MULTILINE
    )
    assert [name for name, _, _ in tiers] == ["exact", "+ lossless", "+ approximate", "exact"]
    stored = [parse_size(size) for _, size, _ in tiers]
    classifiers, variants = logical
    assert 0 < stored[2] <= stored[1] <= stored[0] <= classifiers
    assert 0 < stored[3] <= variants
    family_bytes = [classifiers] * 3 + [variants]
    for (_, _, ratio), bytes_stored, of in zip(tiers, stored, family_bytes, strict=True):
        assert float(ratio) == pytest.approx(of / bytes_stored, rel=0.01, abs=0.01)


def test_every_classifier_has_accuracy_before_and_after(printed):
    pairs = re.findall(rf"accuracy {NUMBER} -> {NUMBER}", section(printed, 1))
    assert len(pairs) == 6  # the digits-cnn family
    for before, after in pairs:
        assert 0 <= float(before) <= 1 and 0 <= float(after) <= 1


def test_both_systems_serve_under_each_memory_limit(printed):
    serving = section(printed, 2)
    assert re.search(r"memory limit: (a memory cgroup per process|no memory cgroup)", serving)
    limits = re.findall(rf"^Memory limit {SIZE}: ", serving, re.MULTILINE)
    assert len(limits) == 2 and parse_size(limits[0]) < parse_size(limits[1])
    served = re.findall(
        rf"^  (weightdb|pytorch) +{NUMBER} req/s  p50 +{NUMBER} ms  p99 +{NUMBER} ms",
        serving,
        re.MULTILINE,
    )
    assert [system for system, *_ in served] == ["weightdb", "pytorch"] * 2
    for _, throughput, p50, p99 in served:
        assert float(throughput) > 0 and 0 <= float(p50) <= float(p99)
    assert len(re.findall(r"x PyTorch's requests per second", serving)) == 2


def test_sql_scores_the_table_with_every_variant(printed):
    scored = re.findall(
        rf"^  (\S+) +(\d+) rows scored, .* on {NUMBER} of them", section(printed, 3), re.MULTILINE
    )
    assert len(scored) == 8
    agreement = {model: float(share) for model, _, share in scored}
    assert agreement["mlp-base"] == 1.0
    assert all(0 <= share <= 1 for share in agreement.values())
    assert {int(rows) for _, rows, _ in scored} == {32}


def test_one_kserve_request_answers_as_the_python_api(printed):
    http = section(printed, 4)
    assert re.search(r"POST http://127\.0\.0\.1:\d+/v2/models/mlp-variant-001/infer", http)
    assert re.search(r"status 200 in \d+\.\d ms, output shape \[8, 16\]", http)
    assert "equals db.predict: True" in http


def test_an_unknown_scale_is_refused_naming_the_choices(tmp_path):
    result = demo("--scale", "huge", "-o", str(tmp_path / "db"))
    assert result.returncode == 2  # a usage error, refused before anything runs
    assert "Invalid value for '--scale'" in result.stderr and "'full', 'small'" in result.stderr
    assert not (tmp_path / "db").exists()
