"""The online bound solves its knapsack exactly and counts queries, not page requests."""

from hypothesis import given, settings
from hypothesis import strategies as st

from weightdb.caching.online_bound import online_bound, page_visits
from weightdb.caching.simulate import Budget
from weightdb.caching.trace import Trace

PAGES = {"a": (["m1"], 4), "b": (["m1", "m2"], 2), "c": (["m2"], 3)}
QUERIES = [("m1", ["a", "b", "a"]), ("m2", ["b", "c"]), ("m1", ["a", "b"])]


def _trace(queries: list[tuple[str, list[str]]], with_ids: bool = True) -> Trace:
    requests = [(model, page) for model, pages in queries for page in pages]
    ids = [number for number, (_, pages) in enumerate(queries) for _ in pages]
    return Trace.build(PAGES, requests, ids if with_ids else None)


def test_each_query_counts_a_page_once() -> None:
    assert page_visits(_trace(QUERIES)).tolist() == [2, 3, 1]


def test_the_bound_keeps_the_best_pages_the_budget_holds() -> None:
    # bytes x visits: a 8, b 6, c 3; the rest is what a query must expect to read
    trace = _trace(QUERIES)
    assert online_bound(trace, Budget(bytes=6)) == 3  # keep a and b
    assert online_bound(trace, Budget(bytes=5)) == 8  # keep b and c: 9 beats a's 8
    assert online_bound(trace, Budget(pages=1)) == 9  # keep a
    assert online_bound(trace, Budget(pages=2, bytes=5)) == 8
    assert online_bound(trace, Budget(bytes=9)) == 0


def test_without_query_ids_back_to_back_queries_of_a_model_merge() -> None:
    queries = [("m1", ["a"]), ("m1", ["a"]), ("m2", ["c"])]
    assert page_visits(_trace(queries)).tolist() == [2, 0, 1]
    assert page_visits(_trace(queries, with_ids=False)).tolist() == [1, 0, 1]


def test_query_ids_survive_the_file_format() -> None:
    trace = _trace(QUERIES)
    assert Trace.from_json(trace.to_json()) == trace
    data = trace.to_json()
    del data["requests"][0]["query"]
    assert Trace.from_json(data).queries is None


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    queries = draw(
        st.lists(
            st.sampled_from([("m1", ["a", "b"]), ("m2", ["b", "c"]), ("m1", ["a"])]),
            min_size=1,
            max_size=20,
        )
    )
    return _trace(queries)


@settings(max_examples=60, deadline=None)
@given(trace=traces(), size=st.integers(0, 8))
def test_more_budget_never_raises_the_bound(trace: Trace, size: int) -> None:
    total = int((page_visits(trace) * trace.page_bytes).sum())
    assert online_bound(trace, Budget(bytes=0)) == total
    assert online_bound(trace, Budget(bytes=size + 1)) <= online_bound(trace, Budget(bytes=size))
    assert online_bound(trace, Budget(bytes=9)) == 0
