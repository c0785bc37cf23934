"""The HTTP routes: KServe v2 (Open Inference Protocol) REST over a weightdb database.

Health, server and model metadata, readiness and inference as the protocol defines them, plus
``GET /v2/models`` (a weightdb extension listing stored models) and ``GET /metrics``
(Prometheus). Every error answers ``{"error": "..."}``. The database is read on every request,
so a model imported or re-laid-out by another process is served without a restart.
"""

import json
import sqlite3
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
from weightdb.server import protocol
from weightdb.server.batching import Batcher
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
    ServerMetadata,
)

EXTENSIONS = ["model_list", "metrics"]
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
            "reads each shared page once. `GET /v2/models` lists stored models (a weightdb "
            "extension), `GET /metrics` is Prometheus. With a token (`WEIGHTDB_TOKEN` or "
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
    app.include_router(_model_routes(db, batcher), dependencies=guarded)
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
            db.catalog.conn.execute("SELECT 1 FROM models LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise ApiError(503, f"the catalog does not answer: {error}") from None
        return Ready(ready=True)

    return router


def _model_routes(db: Database, batcher: Batcher) -> APIRouter:
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
            raise ApiError(503, f"model {name!r} is stored without a graph and cannot predict")
        return Ready(name=name, ready=True)

    @router.post(
        "/models/{name}/infer",
        response_model=None,
        responses={200: {"model": InferResponse}, **_pick(400, 404, 413, 429, 503, 504)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}
                },
            }
        },
    )
    async def infer(name: str, request: Request) -> WireJSON:
        """Run the model on JSON tensors; requests arriving together are batched. The body is
        read as JSON whatever its Content-Type says."""
        body = _parse(await request.body())
        inputs = protocol.decode_request(body)
        request.state.model = name
        outputs = await batcher.infer(name, inputs)
        return WireJSON(protocol.encode_response(name, body, outputs))

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
