"""The tour's query sections: a table scored by every model of a family in SQL, and one
KServe v2 request to the HTTP server started in this process."""

import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from weightdb.database import Database
from weightdb.errors import WeightDBError

SERVER_START_SECONDS = 30


def score_in_sql(db: Database, family: dict, rows: int) -> tuple[str, list[dict]]:
    """Score ``rows`` requests with every model of the family in one query: per model, the
    rows scored and how often its top class is the base model's (the family's first). Returns
    the query as shown to the user, with the base's name in place of its parameter."""
    with np.load(family["dir"] / family["extra"]["requests"]) as split:
        ids = split["input_ids"][:rows]
    db.load_table(
        "requests",
        pa.table({"id": np.arange(len(ids)), "input_ids": [row.tolist() for row in ids]}),
    )
    db.load_table("family", pa.table({"model": [m["name"] for m in family["models"]]}))
    db.sql("SET enable_progress_bar = false")  # DuckDB's bar would garble the tour's output
    query = (
        "WITH base AS (SELECT id, predict_label(?, input_ids) AS label FROM requests) "
        "SELECT f.model, count(*) AS rows_scored, "
        "avg((predict_label(f.model, r.input_ids) = base.label)::INT) AS agrees_with_base "
        "FROM requests r JOIN base USING (id) CROSS JOIN family f GROUP BY f.model ORDER BY 1"
    )
    base = family["models"][0]["name"]
    return query.replace("?", f"'{base}'", 1), db.sql(query, [base]).to_pylist()


@dataclass(frozen=True)
class HTTPResult:
    url: str
    status: int
    seconds: float
    python_api_seconds: float  # db.predict on the same rows, after the request
    shape: list[int]
    equals_python_api: bool


def one_kserve_request(db: Database, model: str, inputs: np.ndarray) -> HTTPResult:
    """Start the server on a free local port, send one v2 infer request, stop the server."""
    import httpx
    import uvicorn

    from weightdb.server.app import create_app
    from weightdb.server.config import ServerConfig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(db, ServerConfig()), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    try:
        wait_until_started(server, thread, port)
        body = {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": list(inputs.shape),
                    "datatype": "INT64",
                    "data": inputs.reshape(-1).tolist(),
                }
            ]
        }
        began = time.perf_counter()
        response = httpx.post(url, json=body, timeout=60)
        seconds = time.perf_counter() - began
        output = response.json()["outputs"][0]
        got = np.array(output["data"], np.float32).reshape(output["shape"])
        began = time.perf_counter()
        expected = next(iter(db.predict(model, {"input_ids": inputs}).values()))
        python_seconds = time.perf_counter() - began
        return HTTPResult(
            url,
            response.status_code,
            seconds,
            python_seconds,
            output["shape"],
            np.array_equal(got, expected),
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until_started(server, thread: threading.Thread, port: int) -> None:
    """Return once uvicorn serves; fail with the reason if it stops or takes too long."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise WeightDBError(
                f"the demo server on 127.0.0.1:{port} stopped before it served (its error is "
                "printed above); fix that and rerun the demo"
            )
        if time.monotonic() > deadline:
            raise WeightDBError(
                f"the demo server on 127.0.0.1:{port} did not start within "
                f"{SERVER_START_SECONDS:.0f}s; rerun the demo on a less busy machine"
            )
        time.sleep(0.05)
