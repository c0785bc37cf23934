"""Serving on Ray Serve: N replicas of the KServe v2 app, each with its own byte budget, behind a
router that sends every model's requests to the replica of its sharing group.

Each replica is a Serve deployment of its own (one replica each, restarted by Serve when its
process dies) that opens the database read-only, with a buffer pool of its own budget, and runs
the very app of ``weightdb serve`` (``weightdb.server.app``) in process. Serve's multiplexing is
not used: it caps models per replica, where a pool is bounded by bytes.

The router is the HTTP ingress. ``weightdb.scaleout.placement.place_models`` over the pages
each model reads puts models that share pages on one replica, so a shared page is read once
per replica that needs it; a model placed nowhere (imported later) goes to a replica chosen by
a hash of its name. Every route of the API only reads, so every request is idempotent: when a
replica dies under a request, the router sends it once to the next replica instead of
answering an error. ``/metrics`` sums every replica's samples (plus the router's own counters);
``/metrics/replicas`` lists them with a ``replica`` label; a replica that does not answer in
time (restarting) is left out of both, and ``weightdb_router_replica_scraped`` says so.
"""

import asyncio
import itertools
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message

from weightdb.database import connect
from weightdb.scaleout.placement import Placement, place_models
from weightdb.scaleout.table_predict import model_pages
from weightdb.server.app import WireJSON, create_app
from weightdb.server.config import ServerConfig
from weightdb.server.limits import BodyGuard, bearer_token

REPLICA = "weightdb-replica-{}"
ROUTER = "weightdb-router"
PROMETHEUS_TEXT = "text/plain; version=0.0.4"
SCRAPE_TIMEOUT_S = 2.0
"""How long ``/metrics`` waits for a replica (one restarting answers no sooner)."""
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/|$)")
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


@dataclass(frozen=True)
class Forwarded:
    """An HTTP request as the router hands it to a replica."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class ReplicaOptions:
    """What every replica opens and how it serves: the arguments of ``weightdb serve``."""

    db_path: Path
    budget: int | str | None
    policy: str | None
    batch_invariant: bool
    config: ServerConfig


class Replica:
    """One replica: the database opened read-only with its own pool, and the app of
    ``weightdb serve`` over it, its batching worker started."""

    async def __init__(self, options: ReplicaOptions) -> None:
        self.db = connect(
            options.db_path,
            create=False,
            read_only=True,
            budget=options.budget,
            policy=options.policy,
            batch_invariant=options.batch_invariant,
        )
        self.app = create_app(self.db, options.config)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()

    async def forward(self, request: Forwarded) -> Answer:
        return await call_app(self.app, request)


async def call_app(app: ASGIApp, request: Forwarded) -> Answer:
    """Run ``request`` through ``app`` in this process and collect its answer."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    answered = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await answered.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    status, headers, chunks = 500, [], []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    await app(scope, receive, send)
    answered.set()
    return Answer(status, headers, b"".join(chunks))


@serve.ingress()
class Router:
    """The HTTP ingress: each request to the replica of its model's sharing group."""

    def __init__(
        self, replicas: Sequence[DeploymentHandle], placement: Placement, config: ServerConfig
    ) -> None:
        self.replicas = list(replicas)
        self.placement = placement
        self.config = config
        self._turns = itertools.count()
        self.registry = CollectorRegistry()
        self.forwarded = Counter(
            "weightdb_router_requests",
            "Requests the router sent to each replica (retries included).",
            ["replica"],
            registry=self.registry,
        )
        self.retries = Counter(
            "weightdb_router_retries",
            "Requests sent again to the next replica because theirs died under them.",
            ["replica"],
            registry=self.registry,
        )
        self.scraped = Gauge(
            "weightdb_router_replica_scraped",
            "1 when the replica answered the last scrape of /metrics in time, else 0.",
            ["replica"],
            registry=self.registry,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(
            BodyGuard, max_bytes=self.config.max_body, timeout_s=self.config.body_timeout_s
        )
        guarded = [Depends(bearer_token(self.config.token))] if self.config.token else []

        @app.exception_handler(HTTPException)
        async def refused(_: Request, error: HTTPException) -> WireJSON:
            """The router's own refusals (a token, a body) answer as the replicas' do."""
            return WireJSON({"error": error.detail}, error.status_code, headers=error.headers)

        @app.get("/metrics", dependencies=guarded)
        async def summed(request: Request) -> Response:
            """Every replica's samples summed, and the router's own counters."""
            families = _summed(list((await self._replica_metrics(request)).values()))
            return _prometheus(families, self.registry)

        @app.get("/metrics/replicas", dependencies=guarded)
        async def by_replica(request: Request) -> Response:
            """Every replica's samples, with a ``replica`` label."""
            return _prometheus(_labelled(await self._replica_metrics(request)), self.registry)

        @app.api_route("/{path:path}", methods=_METHODS)
        async def forward(request: Request) -> Response:
            answer = await self.forward(_forwarded(request, await request.body()))
            return Response(answer.body, answer.status, _header_dict(answer.headers))

        return app

    def replica_for(self, path: str) -> int:
        """The replica of the model a path names (its group's), else the next one in turn."""
        match = _MODEL_PATH.match(path)
        turn = next(self._turns)
        if match is None:
            return turn % len(self.replicas)
        model = match.group(1)
        if model in self.placement.replicas:
            return self.placement.worker_for(model, turn)
        return zlib.crc32(model.encode()) % len(self.replicas)

    async def forward(self, request: Forwarded) -> Answer:
        """Send ``request`` to its replica; if that one dies under it, once to the next."""
        first = self.replica_for(request.path)
        try:
            return await self._send(first, request)
        except RayActorError:
            self.retries.labels(str(first)).inc()
        second = (first + 1) % len(self.replicas)
        try:
            return await self._send(second, request)
        except RayActorError as error:
            body = WireJSON(
                {"error": f"replicas {first} and {second} died under the request: {error}"}
            ).body
            return Answer(503, [(b"content-type", b"application/json")], body)

    async def _send(self, replica: int, request: Forwarded) -> Answer:
        self.forwarded.labels(str(replica)).inc()
        return await self.replicas[replica].forward.remote(request)

    async def _replica_metrics(self, request: Request) -> dict[int, list[Metric]]:
        """The ``/metrics`` of every replica that answers within ``SCRAPE_TIMEOUT_S``, parsed
        (the client's token goes along). Never retried elsewhere: that would count a replica
        twice. ``weightdb_router_replica_scraped`` says which ones answered."""
        scrape = Forwarded("GET", "/metrics", b"", _forward_headers(request), b"")

        async def scraped(replica: int) -> list[Metric] | None:
            try:
                answer = await asyncio.wait_for(self._send(replica, scrape), SCRAPE_TIMEOUT_S)
            except (TimeoutError, RayActorError):
                answer = None
            self.scraped.labels(str(replica)).set(answer is not None and answer.status == 200)
            if answer is None or answer.status != 200:
                return None
            return list(text_string_to_metric_families(answer.body.decode()))

        answers = await asyncio.gather(*(scraped(r) for r in range(len(self.replicas))))
        return {r: families for r, families in enumerate(answers) if families is not None}


def application(
    options: ReplicaOptions, replicas: int, replica_cpus: float = 1.0
) -> serve.Application:
    """The Serve application: ``replicas`` replica deployments and the router in front.

    Models are placed on replicas by their sharing groups, each servable model counting as
    the same load (request rates are not known before serving starts).
    """
    with connect(options.db_path, create=False, read_only=True) as db:
        servable = [m.name for m in db.models() if m.has_graph]
        pages = model_pages(db, servable)
    placement = place_models(pages, dict.fromkeys(servable, 1.0), replicas)
    concurrent = options.config.max_queue + options.config.max_batch
    replica = serve.deployment(Replica)
    handles = [
        replica.options(
            name=REPLICA.format(number),
            num_replicas=1,
            max_ongoing_requests=concurrent,
            ray_actor_options={"num_cpus": replica_cpus},
        ).bind(options)
        for number in range(replicas)
    ]
    router = serve.deployment(
        Router,
        name=ROUTER,
        max_ongoing_requests=options.config.max_connections,
        ray_actor_options={"num_cpus": 0},
    )
    return router.bind(handles, placement, options.config)


def _forwarded(request: Request, body: bytes) -> Forwarded:
    return Forwarded(
        request.method,
        request.url.path,
        request.scope.get("query_string", b""),
        _forward_headers(request),
        body,
    )


def _forward_headers(request: Request) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in request.headers.raw if name != b"host"]


def _header_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}


def _summed(replicas: list[list[Metric]]) -> list[Metric]:
    """One family per name, each sample the sum over replicas (``_created``: the earliest).

    Every weightdb sample adds up across replicas: counts, byte totals, resident and budget
    bytes, queue depths.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for family in itertools.chain.from_iterable(replicas):
        families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
        samples = values.setdefault(family.name, {})
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in samples:
                samples[key] = sample.value
            elif sample.name.endswith("_created"):
                samples[key] = min(samples[key], sample.value)
            else:
                samples[key] += sample.value
    for name, family in families.items():
        for (sample, labels), value in values[name].items():
            family.add_sample(sample, dict(labels), value)
    return list(families.values())


def _labelled(replicas: dict[int, list[Metric]]) -> list[Metric]:
    """One family per name holding every replica's samples, each with its ``replica`` label."""
    families: dict[str, Metric] = {}
    for number, replica in replicas.items():
        for family in replica:
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                merged.add_sample(
                    sample.name, {**sample.labels, "replica": str(number)}, sample.value
                )
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _prometheus(families: list[Metric], *registries: CollectorRegistry) -> Response:
    merged = CollectorRegistry()
    merged.register(_Families(families))
    text = b"".join(generate_latest(r) for r in (merged, *registries))
    return Response(text, media_type=PROMETHEUS_TEXT)
