"""Each replacement policy evicts exactly in the order its rule says, and never a pinned page."""

from hypothesis import given, settings
from hypothesis import strategies as st

from weightdb.caching.simulate import POLICY_NAMES, Budget, SimulatedPool, build_policy, simulate
from weightdb.caching.trace import Trace
from weightdb.storage.policies import make_policy


def _trace(pages: dict[str, tuple[str, ...]], requests: list[tuple[str, str]]) -> Trace:
    return Trace.build({page: (models, 1) for page, models in pages.items()}, requests)


def _victims(policy: str, trace: Trace, capacity: int) -> list[str]:
    """Pages evicted while replaying ``trace`` in a pool of ``capacity`` pages, in order."""
    pool = SimulatedPool(build_policy(policy, trace), trace.page_bytes, Budget(pages=capacity))
    evicted = []
    for model, page in trace.requests:
        before = set(pool.resident)
        pool.request(page, model)
        evicted += [trace.page_ids[gone] for gone in before - pool.resident]
    return evicted


PRIVATE = {"a": ("m",), "b": ("m",), "c": ("m",), "d": ("m",)}


def _private(*pages: str) -> Trace:
    return _trace(PRIVATE, [("m", page) for page in pages])


def test_lru_evicts_least_recently_requested() -> None:
    assert _victims("lru", _private("a", "b", "a", "c", "d"), capacity=2) == ["b", "a"]


def test_mru_evicts_most_recently_requested() -> None:
    assert _victims("mru", _private("a", "b", "a", "c", "d"), capacity=2) == ["a", "c"]


def test_lfu_evicts_least_frequent_with_counts_surviving_eviction_and_lru_ties() -> None:
    # c evicts b (1 request vs a's 2); b returns with 2 requests and evicts c (1);
    # d then finds a and b at 2 requests each and evicts a, the less recently requested.
    trace = _private("a", "a", "b", "c", "b", "d")
    assert _victims("lfu", trace, capacity=2) == ["b", "c", "a"]


def test_netsdb_cost_evicts_private_pages_first_then_lru() -> None:
    pages = {"s1": ("m1", "m2"), "p1": ("m1",), "s2": ("m1", "m2"), "s3": ("m1", "m2")}
    trace = _trace(pages, [("m1", "s1"), ("m1", "p1"), ("m2", "s2"), ("m2", "s3")])
    # p1 goes although s1 is older; with only shared pages left, the older s1 goes.
    assert _victims("netsdb-cost", trace, capacity=2) == ["p1", "s1"]


def test_weightdb_evicts_the_page_of_the_least_requested_models() -> None:
    pages = {"a": ("m1", "m2"), "x": ("m1",), "y": ("m2",), "z": ("m3",)}
    requests = [("m1", "a"), ("m1", "x")] * 2 + [("m2", "a"), ("m2", "y"), ("m3", "z")]
    requests.append(("m2", "y"))
    # z evicts y: m2 was requested once, m1 twice, and a serves both. y then evicts z: m3 was
    # requested once, m2 now once and a half per page, m1 twice.
    assert _victims("expected-reread", _trace(pages, requests), capacity=3) == ["y", "z"]


def test_weightdb_keeps_a_fixed_part_of_an_oversized_set() -> None:
    # Of pages visited equally often the most recently requested goes (b for c, then b for c
    # again); c, visited less than a, goes for b. A cycle over one page more than fits hits a
    # twice, where LRU misses every request.
    trace = _private("a", "b", "c", "a", "b", "c", "a")
    assert _victims("expected-reread", trace, capacity=2) == ["b", "c", "b"]
    assert _victims("lru", trace, capacity=2) == ["a", "b", "c", "a", "b"]


def test_weightdb_evicts_the_page_whose_loss_rereads_fewest_bytes() -> None:
    # Both pages are visited three times, but m2's is a quarter of the size: losing it costs
    # about 3 x 1 bytes re-read, losing m1's 3 x 4, so m2's page goes.
    pages = {"big": (("m1",), 4), "small": (("m2",), 1), "new": (("m3",), 1)}
    requests = [("m1", "big"), ("m2", "small"), ("m1", "big"), ("m2", "small")]
    trace = Trace.build(pages, [*requests, ("m1", "big"), ("m2", "small"), ("m3", "new")])
    pool = SimulatedPool(build_policy("expected-reread", trace), trace.page_bytes, Budget(bytes=5))
    for model, page in trace.requests:
        pool.request(page, model)
    assert {trace.page_ids[page] for page in pool.resident} == {"big", "new"}


def test_weightdb_counts_a_visit_of_many_block_reads_once() -> None:
    models = {0: ["m1"], 1: ["m2"], 2: ["m2"]}
    policy = make_policy("expected-reread", models.__getitem__)
    for page in (0, 1):
        policy.on_request(page, models[page][0], hit=False)
        policy.on_insert(page, 1)
    for _ in range(5):  # one visit of page 0 reading five blocks
        policy.on_request(0, "m1", hit=True)
    for page in (2, 1):  # m2 visits its two pages, page 1 for the second time
        policy.on_request(page, "m2", hit=page == 1)
    # m1: 1 visit of its 1 page; m2: 3 visits of its 2 pages. Counting block reads would
    # rate m1 at 6 and evict page 1.
    assert policy.victim(lambda page: True) == 0


def test_weightdb_learns_sharing_from_requests_without_a_catalog() -> None:
    # Pages 0 and 1 are each visited four times, page 0 last, so on their own visits they tie
    # and page 0, the most recent, would go. Page 0 is read by four models, page 1 by one: only
    # the sharing learnt from the requests (the catalog lookup reports none) saves page 0.
    policy = make_policy("expected-reread")
    requests = [(1, "m5"), (2, "m5"), (1, "m5"), (3, "m5"), (1, "m5"), (4, "m5"), (1, "m5")]
    requests += [(0, "m1"), (0, "m2"), (0, "m3"), (0, "m4")]
    resident: set[int] = set()
    for page, model in requests:
        policy.on_request(page, model, hit=page in resident)
        if page not in resident:
            policy.on_insert(page, 1)
            resident.add(page)
    assert policy.victim(lambda page: page in (0, 1)) == 1


def test_weightdb_keeps_the_pages_a_query_will_read_again() -> None:
    models = {0: ["m"], 1: ["m"], 2: ["m"]}
    policy = make_policy("expected-reread", models.__getitem__)
    policy.on_query("m")
    for page, size in [(0, 4), (2, 1), (1, 4)]:  # m's first query reads a, c, b
        policy.on_request(page, "m", hit=False)
        policy.on_insert(page, size)
    policy.on_query("m")  # the next query of m is expected to read a, c, b again
    policy.on_request(0, "m", hit=True)
    # By loss c would go (a quarter of the bytes), but this query still reads c and b: a goes.
    assert policy.victim(lambda page: True) == 0
    # When every candidate is still to be read, the one the query reads last goes.
    assert policy.victim(lambda page: page != 0) == 1


def test_replay_tells_the_policy_where_queries_start() -> None:
    # Each query reads its model's four pages twice (two row blocks) through a pool of three.
    # Knowing the first query's order, the second misses as often as under opt.
    pages = {page: (["m"], 1) for page in "abcd"}
    requests = [("m", page) for page in "abcdabcd" * 2]
    queries = [number // 8 for number in range(16)]
    with_ids = Trace.build(pages, requests, queries)
    budget = Budget(pages=3)
    assert simulate(with_ids, "expected-reread", budget).misses == 8
    assert simulate(with_ids, "opt", budget).misses == 8
    assert simulate(Trace.build(pages, requests), "expected-reread", budget).misses == 10


def test_opt_evicts_the_page_needed_farthest_in_the_future() -> None:
    # At c, a is needed before b; at the second b, neither a nor c is needed again, and c,
    # the less recently requested of the two, goes.
    assert _victims("opt", _private("a", "b", "c", "a", "b"), capacity=2) == ["b", "c"]


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(["m1", "m2", "m3"]), st.integers(0, 7)), max_size=40
    ),
    pinned=st.sets(st.integers(0, 7)),
    policy=st.sampled_from(list(POLICY_NAMES)),
)
def test_pinned_pages_are_never_victims(
    requests: list[tuple[str, int]], pinned: set[int], policy: str
) -> None:
    pages = {str(page): (("m1", "m2", "m3")[: page % 3 + 1], 1) for page in range(8)}
    trace = Trace.build(pages, [(model, str(page)) for model, page in requests])
    replacement = build_policy(policy, trace)
    resident: set[int] = set()
    for model, page in trace.requests:
        replacement.on_request(page, model, hit=page in resident)
        if page not in resident:
            resident.add(page)
            replacement.on_insert(page, 1)
    victim = replacement.victim(lambda page: page not in pinned)
    if resident <= pinned:
        assert victim is None
    else:
        assert victim in resident - pinned
