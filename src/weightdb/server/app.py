"""The HTTP routes: KServe v2 (Open Inference Protocol) REST over a weightdb database.

Health, server and model metadata, readiness and inference as the protocol defines them, plus
``GET /v2/models`` (a weightdb extension listing stored models) and ``GET /metrics``
(Prometheus). Every error answers ``{"error": "..."}``. The database is read on every request,
so a model imported or re-laid-out by another process is served without a restart.
"""

import json
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from weightdb.database import Database
from weightdb.errors import WeightDBError
from weightdb.server import binary_data, protocol
from weightdb.server.batching import Batcher
from weightdb.server.binary_data import HEADER
from weightdb.server.config import ServerConfig
from weightdb.server.errors import ApiError, status_of
from weightdb.server.limits import BodyGuard, bearer_token
from weightdb.server.metrics import InferenceMetrics, ServerMetrics
from weightdb.server.schemas import (
    ErrorBody,
    InferRequest,
    InferResponse,
    Live,
    ModelEntry,
    ModelList,
    ModelMetadata,
    Ready,
    RepositoryEntry,
    RepositoryIndexRequest,
    ServerMetadata,
    StatisticsResponse,
)
from weightdb.server.statistics import InferenceStatistics
from weightdb.storage.catalog import CatalogError

# model_repository(index): the index only; every stored model is served without a load.
EXTENSIONS = [
    "binary_tensor_data",
    "statistics",
    "model_repository(index)",
    "model_list",
    "metrics",
]
NO_GRAPH = "stored without a graph, so it cannot predict"
_ERRORS = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Malformed JSON, or inputs the model rejects (names, shapes, datatypes)."),
        (401, "Missing or wrong bearer token (when the server has one)."),
        (404, "No model of that name."),
        (413, "Request body over the server's --max-body."),
        (429, "The request queue is full; retry later."),
        (503, "The buffer pool budget cannot hold the request, or the server is stopping."),
        (504, "No answer within the server's --timeout."),
    )
}


class WireJSON(JSONResponse):
    """Compact, standard JSON: a NaN or infinity left in ``content`` is an error, not the
    non-standard tokens Python's json would write (outputs carry them as strings)."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def create_app(db: Database, config: ServerConfig) -> FastAPI:
    """The application serving ``db``; its lifespan starts and stops the batching worker."""
    batcher: Batcher
    metrics = ServerMetrics(db, queue_depth=lambda: len(batcher.queue))
    batcher = Batcher(db, config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="weightdb",
        version=_version(),
        summary="KServe v2 / Open Inference Protocol REST API over a weightdb database.",
        description=(
            "Models stored as deduplicated tensor blocks, served with dynamic batching. "
            "Requests for one model arriving within `--max-wait` run as one batch when the "
            "model's graph provably keeps rows apart (`batched_across_requests` in its "
            "metadata), else one by one; a round of batches for models that share weights "
            "reads each shared page once. Tensors travel as JSON or as binary data (the binary "
            "tensor data extension); an input whose dtype differs from the model's is converted "
            "only when nothing is lost in kind (float64 to float32, int32 to int64, FP16 or BF16 "
            "to float32), counted in `weightdb_input_casts_total`. `GET /v2/models/stats` and "
            "`POST /v2/repository/index` are the statistics and repository-index extensions; "
            "`GET /v2/models` lists stored models (a weightdb extension), `GET /metrics` is "
            "Prometheus. With a token (`WEIGHTDB_TOKEN` or "
            "`--token-file`), every route except the health probes, these docs included, "
            'needs `Authorization: Bearer <token>`. Errors answer `{"error": "..."}`.'
        ),
        lifespan=lifespan,
        default_response_class=WireJSON,
        docs_url=None,  # served by _docs_routes, behind the token when there is one
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(BodyGuard, max_bytes=config.max_body, timeout_s=config.body_timeout_s)
    app.add_middleware(InferenceMetrics, metrics=metrics)
    _add_error_handlers(app)
    _document_infer_request(app)
    app.include_router(_health_routes(db))
    guarded = [Depends(bearer_token(config.token))] if config.token else []
    app.include_router(_extension_routes(db, metrics.statistics), dependencies=guarded)
    app.include_router(_model_routes(db, batcher, metrics.statistics), dependencies=guarded)
    app.include_router(_metrics_route(metrics), dependencies=guarded)
    app.include_router(_docs_routes(app), dependencies=guarded)
    return app


def _docs_routes(app: FastAPI) -> APIRouter:
    """The OpenAPI schema and its Swagger UI and ReDoc pages, as FastAPI would serve them."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    return router


def _health_routes(db: Database) -> APIRouter:
    router = APIRouter(prefix="/v2/health", tags=["health"])

    @router.get("/live", response_model=Live)
    def live() -> Live:
        """The process answers."""
        return Live(live=True)

    @router.get(
        "/ready", response_model=Ready, response_model_exclude_none=True, responses=_pick(503)
    )
    def ready() -> Ready:
        """The database answers queries."""
        try:
            db.store.catalog.answers()
        except CatalogError as error:
            raise ApiError(503, f"the catalog does not answer: {error}") from None
        return Ready(ready=True)

    return router


def _model_routes(db: Database, batcher: Batcher, statistics: InferenceStatistics) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["models"], responses={401: _ERRORS[401]})

    @router.get("", response_model=ServerMetadata)
    def server_metadata() -> ServerMetadata:
        return ServerMetadata(name="weightdb", version=_version(), extensions=EXTENSIONS)

    @router.get("/models", response_model=ModelList)
    def list_models() -> ModelList:
        """Every stored model (weightdb extension); `servable` is false for weights without a
        graph."""
        return ModelList(
            models=[
                ModelEntry(
                    name=m.name,
                    format=m.format,
                    tensors=m.tensors,
                    bytes=m.logical_bytes,
                    servable=m.has_graph,
                )
                for m in db.models()
            ]
        )

    @router.get("/models/{name}", response_model=ModelMetadata, responses=_pick(400, 404))
    def model_metadata(name: str) -> ModelMetadata:
        """Inputs and outputs: names, datatypes and shapes (-1 for a free dimension)."""
        return protocol.model_metadata(db, name)

    @router.get("/models/{name}/ready", response_model=Ready, responses=_pick(404, 503))
    def model_ready(name: str) -> Ready:
        """200 when the model can be served; 404 when it does not exist, 503 when it is stored
        without a graph."""
        if not db.model(name).has_graph:
            raise ApiError(503, f"model {name!r} is {NO_GRAPH}")
        return Ready(name=name, ready=True)

    @router.post(
        "/models/{name}/infer",
        response_model=None,
        responses={200: {"model": InferResponse}, **_pick(400, 404, 413, 429, 503, 504)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                        "description": "Binary data extension: Inference-Header-Content-Length "
                        "bytes of InferRequest JSON, then each binary input's bytes.",
                    },
                },
            }
        },
    )
    async def infer(name: str, request: Request) -> Response:
        """Run the model on tensors given as JSON or as binary data (the body begins with
        `Inference-Header-Content-Length` bytes of JSON); requests arriving together are
        batched. The JSON is read whatever the Content-Type says."""
        header, tail = binary_data.split_body(await request.body(), request.headers.get(HEADER))
        body = _parse(header)
        inputs = protocol.decode_request(body, binary_data.input_bytes(body, tail))
        request.state.model = name
        outputs = await batcher.infer(name, inputs)
        started = time.perf_counter()
        response = _infer_response(name, body, outputs)
        statistics.encoded(name, int((time.perf_counter() - started) * 1e9))
        return response

    return router


def _extension_routes(db: Database, statistics: InferenceStatistics) -> APIRouter:
    """The statistics and repository-index extensions. Included before the model routes, so
    that ``/v2/models/stats`` is not read as the model named "stats"."""
    router = APIRouter(prefix="/v2", tags=["extensions"], responses={401: _ERRORS[401]})

    @router.get("/models/stats", response_model=StatisticsResponse)
    def all_statistics() -> dict:
        """Per-model counts and cumulative durations since the server started (the KServe v2
        statistics extension, as Triton answers it), for every stored model."""
        return statistics.as_json([m.name for m in db.models()])

    @router.get(
        "/models/{name}/stats", response_model=StatisticsResponse, responses=_pick(400, 404)
    )
    def model_statistics(name: str) -> dict:
        """The statistics of one model."""
        db.model(name)  # 404 when it does not exist
        return statistics.as_json([name])

    @router.post("/repository/index", response_model=list[RepositoryEntry])
    async def repository_index(request: Request) -> list[dict]:
        """Every stored model, `READY` when it can predict and `UNAVAILABLE` (with the reason)
        when it is stored without a graph. The body may be empty or `{"ready": true}` (only
        the models that can predict)."""
        only_ready = _parse_index_request(await request.body()).ready
        entries = [
            {"name": m.name, "state": "READY", "reason": ""}
            if m.has_graph
            else {"name": m.name, "state": "UNAVAILABLE", "reason": NO_GRAPH}
            for m in db.models()
        ]
        return [e for e in entries if e["state"] == "READY" or not only_ready]

    return router


def _metrics_route(metrics: ServerMetrics) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        """Requests, latency, batch sizes, rounds, queue depth and the buffer pool."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return router


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> WireJSON:
        return WireJSON({"error": error.detail}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> WireJSON:
        return WireJSON({"error": _describe(error.errors())}, 400)

    @app.exception_handler(WeightDBError)
    async def weightdb_error(_: Request, error: WeightDBError) -> WireJSON:
        return WireJSON({"error": str(error)}, status_of(error))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> WireJSON:
        return WireJSON({"error": f"internal error: {type(error).__name__}: {error}"}, 500)


def _parse(body: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as error:
        raise ApiError(400, _describe(error.errors())) from None


def _parse_index_request(body: bytes) -> RepositoryIndexRequest:
    try:
        return RepositoryIndexRequest.model_validate_json(body.strip() or b"{}")
    except ValidationError as error:
        raise ApiError(400, _describe(error.errors())) from None


def _infer_response(name: str, request: InferRequest, outputs: dict) -> Response:
    """JSON, or with outputs asked for as binary data, the JSON header and their bytes."""
    header, chunks = protocol.encode_response(name, request, outputs)
    if not chunks:
        return WireJSON(header)
    encoded = WireJSON(header).body
    return Response(
        b"".join([encoded, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER: str(len(encoded))},
    )


def _describe(errors: Sequence[dict]) -> str:
    """One line naming each problem and where in the request it is."""
    problems = []
    for item in errors:
        if item["type"] == "json_invalid":
            problems.append(f"malformed JSON: {item.get('ctx', {}).get('error', item['msg'])}")
            continue
        where = ".".join(str(part) for part in item["loc"]) or "body"
        problems.append(f"{where}: {item['msg']}")
    return "invalid request: " + "; ".join(problems)


def _document_infer_request(app: FastAPI) -> None:
    """Put InferRequest (read by hand from the raw body) into the OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            request = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request.pop("$defs", {}), InferRequest=request)
        return app.openapi_schema

    app.openapi = openapi


def _pick(*statuses: int) -> dict:
    return {status: _ERRORS[status] for status in statuses}


def _version() -> str:
    return metadata.version("weightdb")
