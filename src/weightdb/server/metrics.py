"""Prometheus metrics of one server: requests, input casts, batches and rounds as they happen,
and the buffer pool and queue read when ``/metrics`` is scraped; also the per-model statistics
of the KServe v2 statistics extension, fed by the same observations."""

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightdb.database import Database
from weightdb.server.statistics import InferenceStatistics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
UNKNOWN_MODEL = "_unknown"
"""The model label of requests that name no stored model (keeps label values bounded)."""


class ServerMetrics:
    def __init__(self, db: Database, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "weightdb_requests",
            "Inference requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "weightdb_request_seconds",
            "Inference request latency from arrival to answer, by model and HTTP status.",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "weightdb_batch_rows",
            "Rows per batch run by the engine.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.round_models = Histogram(
            "weightdb_round_models",
            "Distinct models per scheduling round.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=self.registry,
        )
        self.round_read_bytes = Histogram(
            "weightdb_round_read_bytes",
            "Bytes read from storage into the buffer pool per scheduling round.",
            buckets=(0, *(2**k for k in range(16, 33, 2))),
            registry=self.registry,
        )
        self.input_casts = Counter(
            "weightdb_input_casts",
            "Request inputs converted to the model's dtype (casts that lose nothing in kind, "
            "e.g. float64 to float32), by model, input and dtypes.",
            ["model", "input", "given", "expected"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(db, queue_depth))
        self.statistics = InferenceStatistics()

    def observe(self, model: str, status: int, started: float) -> None:
        """Count one answered inference request (``started`` from ``time.perf_counter``)."""
        labels = (model, str(status))
        elapsed = time.perf_counter() - started
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(elapsed)
        if model != UNKNOWN_MODEL:
            self.statistics.answered(model, status == 200, int(elapsed * 1e9))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    def __init__(self, db: Database, queue_depth: Callable[[], int]) -> None:
        self._db = db
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
        stats = self._db.pool.stats()
        yield GaugeMetricFamily(
            "weightdb_queue_depth", "Inference requests waiting to run.", self._queue_depth()
        )
        for name, value, text in (
            ("hits", stats.hits, "Page requests served from the buffer pool."),
            ("misses", stats.misses, "Page requests that read the page from storage."),
            ("evictions", stats.evictions, "Pages evicted to make room."),
            ("read_bytes", stats.bytes_read, "Bytes read from storage into the pool."),
        ):
            yield CounterMetricFamily(f"weightdb_pool_{name}", text, value)
        yield GaugeMetricFamily(
            "weightdb_pool_resident_bytes", "Bytes of pages in the pool.", stats.resident_bytes
        )
        yield GaugeMetricFamily(
            "weightdb_pool_pinned_pages", "Pages pinned by running work.", stats.pinned_pages
        )
        if stats.budget_bytes is not None:
            yield GaugeMetricFamily(
                "weightdb_pool_budget_bytes", "The pool's byte budget.", stats.budget_bytes
            )
        by_degree = GaugeMetricFamily(
            "weightdb_pool_resident_pages",
            "Resident pages by sharing degree (how many models use the page).",
            labels=["sharing"],
        )
        for degree, pages in sorted(self._sharing_degrees().items()):
            by_degree.add_metric([str(degree)], pages)
        yield by_degree

    def _sharing_degrees(self) -> dict[int, int]:
        """Sharing degree -> resident pages with that degree."""
        resident = list(self._db.pool.resident())
        counts: dict[int, int] = {}
        for degree in self._db.store.catalog.sharing_degrees(resident).values():
            counts[degree] = counts.get(degree, 0) + 1
        return counts


class InferenceMetrics:
    """ASGI middleware counting every ``/v2/models/{name}/infer`` answer with its latency,
    including those refused before the route ran (bad token, oversized or malformed body).

    The model label is the name the route recorded in ``request.state.model`` once the request
    was well formed, and ``_unknown`` otherwise or when the model does not exist, so clients
    cannot grow the label set with made-up names.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            path.startswith("/v2/models/") and path.endswith("/infer")
        ):
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, recording)
        finally:
            model = scope.get("state", {}).get("model", UNKNOWN_MODEL)
            self._metrics.observe(UNKNOWN_MODEL if status == 404 else model, status, started)
