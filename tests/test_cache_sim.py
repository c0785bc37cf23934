"""Traces load and validate, replay stays within budget, opt is never beaten, the CLI reports."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from weightdb.caching.simulate import POLICY_NAMES, Budget, SimulatedPool, simulate
from weightdb.caching.trace import Trace, TraceFormatError, read_trace, write_trace
from weightdb.caching.workload import zipf_trace
from weightdb.cli import app
from weightdb.errors import BudgetExceededError, WeightDBError

MODELS = ("m1", "m2", "m3", "m4")


@st.composite
def traces(draw: st.DrawFn, equal_sizes: bool) -> Trace:
    count = draw(st.integers(1, 10))
    pages = {}
    for page in range(count):
        models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=4, unique=True))
        size = 1 if equal_sizes else draw(st.integers(1, 5))
        pages[f"p{page}"] = (models, size)
    requests = draw(st.lists(st.sampled_from(sorted(pages)), max_size=60))
    return Trace.build(pages, [(draw(st.sampled_from(pages[p][0])), p) for p in requests])


@settings(max_examples=150, deadline=None)
@given(trace=traces(equal_sizes=True), capacity=st.integers(1, 6))
def test_no_policy_misses_less_than_opt(trace: Trace, capacity: int) -> None:
    budget = Budget(pages=capacity)
    best = simulate(trace, "opt", budget).misses
    for policy in POLICY_NAMES:
        assert simulate(trace, policy, budget).misses >= best, policy


@settings(max_examples=60, deadline=None)
@given(
    trace=traces(equal_sizes=False),
    pages=st.none() | st.integers(1, 6),
    size=st.integers(5, 20),
    policy=st.sampled_from(list(POLICY_NAMES)),
)
def test_resident_set_never_exceeds_the_budget(
    trace: Trace, pages: int | None, size: int, policy: str
) -> None:
    budget = Budget(pages=pages, bytes=size)

    def check(pool: SimulatedPool) -> None:
        assert pool.resident_bytes == sum(trace.page_bytes[page] for page in pool.resident)
        assert budget.fits(len(pool.resident), pool.resident_bytes)

    result = simulate(trace, policy, budget, observe=check)
    assert result.hits + result.misses == len(trace.requests)


def test_a_budget_below_one_page_is_refused() -> None:
    trace = Trace.build({"p": (["m"], 4096)}, [("m", "p")])
    with pytest.raises(BudgetExceededError, match="4096"):
        simulate(trace, "lru", Budget(bytes=1000))


VALID = {
    "pages": {"7": {"models": ["m1", "m2"], "bytes": 4096}, "9": {"models": ["m2"], "bytes": 10}},
    "requests": [{"model": "m1", "page": "7"}, {"model": "m2", "page": "9", "query": "q1"}],
}


def test_trace_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(VALID))
    trace = read_trace(path)
    assert trace.page_ids == ("7", "9")
    assert [tuple(request) for request in trace.requests] == [("m1", 0), ("m2", 1)]
    write_trace(trace, tmp_path / "again.json")
    assert read_trace(tmp_path / "again.json") == trace


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("requests"), "no 'requests' key"),
        (lambda t: t["pages"]["7"].pop("bytes"), "page '7' has no 'bytes' key"),
        (lambda t: t["pages"]["7"].update(bytes=0), "positive integer"),
        (lambda t: t["pages"]["7"].update(models="m1"), "'models' must be a JSON array"),
        (lambda t: t["requests"].append({"model": "m1", "page": "8"}), "page '8' is not listed"),
        (lambda t: t["requests"].append({"model": "m1", "page": "9"}), "does not reference"),
        (lambda t: t["requests"].append(["m1", "7"]), "request 2 must be a JSON object"),
    ],
)
def test_malformed_traces_are_named_errors(tmp_path: Path, change, message: str) -> None:
    data = json.loads(json.dumps(VALID))
    change(data)
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TraceFormatError, match=message):
        read_trace(path)


def test_invalid_json_is_a_weightdb_error(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text('{"pages": ')
    with pytest.raises(WeightDBError, match=r"not valid JSON.*line 1"):
        read_trace(path)


FAMILY = {"a": ["base", "ga", "a1"], "b": ["base", "ga", "b1"], "c": ["base", "c1", "c2"]}
SIZES = dict.fromkeys(["base", "ga", "a1", "b1", "c1", "c2"], 4096)


def test_zipf_requests_read_every_page_of_the_model_in_order() -> None:
    trace = zipf_trace(FAMILY, SIZES, model_requests=50, skew=0.9, seed=3)
    assert len(trace.requests) == 150
    for start in range(0, 150, 3):
        model = trace.requests[start].model
        pages = [trace.page_ids[request.page] for request in trace.requests[start : start + 3]]
        assert pages == FAMILY[model]
    assert trace.models_of(trace.page_ids.index("base")) == ("a", "b", "c")


def test_shifting_trace_changes_the_most_popular_model() -> None:
    trace = zipf_trace(FAMILY, SIZES, model_requests=2000, skew=1.2, seed=1, shift=True)
    halves = [trace.requests[:3000:3], trace.requests[3000::3]]
    top = [max(FAMILY, key=[r.model for r in half].count) for half in halves]
    assert top[0] != top[1]


runner = CliRunner()


def test_cli_simulate_json_and_compare_table(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    write_trace(zipf_trace(FAMILY, SIZES, model_requests=40, skew=0.9), path)
    result = runner.invoke(
        app, ["cache", "simulate", str(path), "--policy", "lfu", "--memory", "12KiB", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["requests"] == report["hits"] + report["misses"] == 120
    assert {"hit_ratio", "bytes_read", "evictions"} <= report.keys()

    result = runner.invoke(app, ["cache", "compare", str(path), "--budget-bytes", "12KiB"])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in POLICY_NAMES)
    assert "online bound: " in result.output


def test_cli_rejects_unknown_policy_and_missing_budget(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(VALID))
    result = runner.invoke(
        app, ["cache", "simulate", str(path), "--policy", "fifo", "--memory", "12KiB"]
    )
    assert result.exit_code == 2 and "'fifo' is not one of" in result.output
    result = runner.invoke(app, ["cache", "simulate", str(path)])
    assert result.exit_code == 2 and "budget" in result.output
