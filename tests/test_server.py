"""The KServe v2 server as a client sees it: a real server in a subprocess on a loopback port,
called over HTTP. Answers equal ``db.predict``; bad requests get the right status and a message
naming the problem; concurrent mixed-model load is answered correctly; a model imported by
another process is served without a restart; SIGKILL mid-load loses no model."""

import json
import math
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from conftest import SMALL
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

import weightdb
from weightdb.server.app import create_app
from weightdb.server.config import ServerConfig

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODELS = ("mlp", "mlp-copy", "cnn", "text")
SHAPES = {"mlp": (100,), "mlp-copy": (100,), "cnn": (1, 8, 8), "text": (7,)}


@pytest.fixture(scope="module")
def db_path(tmp_path_factory, exported_models: dict[str, Path]) -> Path:
    """A database with an MLP, an identical copy (every block shared), a CNN and a text model."""
    path = tmp_path_factory.mktemp("served") / "db"
    sources = {"mlp": "mlp", "mlp-copy": "mlp", "cnn": "cnn", "text": "text"}
    with weightdb.connect(path, settings=SMALL) as db:
        for name, source in sources.items():
            db.import_model(exported_models[source], name)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    db_path: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python -m weightdb serve``; yield its base URL and process once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "weightdb", "--db", str(db_path), "serve"]
    process = subprocess.Popen(
        [*command, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def wait_until_live(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read().decode()}")
        try:
            if httpx.get(f"{url}/v2/health/live").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not come up within 60 s")


@pytest.fixture(scope="module")
def server(db_path: Path) -> Iterator[str]:
    token = {"WEIGHTDB_TOKEN": TOKEN}
    with running_server(db_path, "--max-body", "256KiB", env=token) as (url, process):
        assert TOKEN not in Path(f"/proc/{process.pid}/cmdline").read_text()
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
        yield c


def sample(model: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    if model == "text":
        return rng.integers(0, 1000, (rows, *SHAPES[model]), dtype=np.int64)
    return rng.standard_normal((rows, *SHAPES[model])).astype(np.float32)


def body(name: str, array: np.ndarray) -> dict:
    datatype = "INT64" if array.dtype == np.int64 else "FP32"
    return {
        "inputs": [
            {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}
        ]
    }


def input_name(model: str) -> str:
    return "ids" if model == "text" else "x"


def infer(client: httpx.Client, model: str, array: np.ndarray) -> np.ndarray:
    response = client.post(f"/v2/models/{model}/infer", json=body(input_name(model), array))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def expected_outputs(db_path: Path, model: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    with weightdb.connect(db_path, create=False) as db:
        name = input_name(model)
        return [next(iter(db.predict(model, {name: a}).values())) for a in arrays]


def test_answers_equal_db_predict(client: httpx.Client, db_path: Path) -> None:
    rng = np.random.default_rng(0)
    for model in MODELS:
        arrays = [sample(model, rows, rng) for rows in (1, 3)]
        for array, expected in zip(arrays, expected_outputs(db_path, model, arrays), strict=True):
            np.testing.assert_array_equal(infer(client, model, array), expected)


def test_metadata_list_and_health(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "weightdb"
    listed = {m["name"] for m in client.get("/v2/models").json()["models"]}
    assert listed == set(MODELS)
    meta = client.get("/v2/models/mlp").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 100]}]
    assert [o["datatype"] for o in meta["outputs"]] == ["FP32"]
    assert meta["batched_across_requests"] is True
    text = client.get("/v2/models/text").json()
    assert text["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}]
    assert client.get("/v2/models/cnn/ready").json() == {"name": "cnn", "ready": True}
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert "/v2/models/{name}/infer" in client.get("/openapi.json").json()["paths"]


def mlp_body(shape: list, datatype: str = "FP32", name: str = "x") -> dict:
    count = math.prod(int(d) for d in shape)
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": [1] * count}]}


@pytest.mark.parametrize(
    ("model", "content", "status", "message"),
    [
        ("mlp", b'{"inputs": [', 400, "malformed JSON"),
        ("mlp", b'{"outputs": []}', 400, "inputs"),
        ("mlp", mlp_body([2, 99]), 400, "dimension 1 is 99, expected 100"),
        ("mlp", mlp_body([2, 10, 10]), 400, "must have 2 dimensions"),
        ("mlp", mlp_body([1, 100], name="y"), 400, "missing ['x']"),
        ("text", mlp_body([1, 7], "FP32", "ids"), 400, "must be int64"),
        ("mlp", mlp_body([1, 100], "FP99"), 400, "unknown datatype 'FP99'"),
        (
            "mlp",
            {"inputs": [{"name": "x", "shape": [1, 100], "datatype": "FP32", "data": [1]}]},
            400,
            "needs 100 values, data has 1",
        ),
        ("mlp", mlp_body(["1", "100"]), 400, "inputs.0.shape.0: Input should be a valid integer"),
        ("missing", mlp_body([1, 100]), 404, "no model named 'missing'"),
        ("mlp", mlp_body([2000, 100]), 413, "exceeds 256.0 KiB"),
    ],
)
def test_bad_requests_get_status_and_message(
    client: httpx.Client, model: str, content: bytes | dict, status: int, message: str
) -> None:
    url = f"/v2/models/{model}/infer"
    if isinstance(content, dict):
        response = client.post(url, json=content)
    else:
        response = client.post(url, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text[:300]
    assert message in response.json()["error"]


def test_token_is_required(server: str) -> None:
    url = f"{server}/v2/models/mlp/infer"
    missing = httpx.post(url, json=mlp_body([1, 100]))
    assert missing.status_code == 401
    assert "missing bearer token" in missing.json()["error"]
    wrong = httpx.post(url, json=mlp_body([1, 100]), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "wrong bearer token" in wrong.json()["error"]
    assert httpx.get(f"{server}/v2/health/live").status_code == 200  # probes stay open
    for page in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{server}{page}").status_code == 401
        assert httpx.get(f"{server}{page}", headers=AUTH).status_code == 200


def test_token_from_a_file_and_a_warning_for_one_on_the_command_line(
    db_path: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    with running_server(db_path, "--token-file", str(secret)) as (url, process):
        assert "from-a-file" not in Path(f"/proc/{process.pid}/cmdline").read_text()
        bearer = {"Authorization": "Bearer from-a-file"}
        assert httpx.get(f"{url}/v2/models", headers=bearer).status_code == 200
        assert httpx.get(f"{url}/v2/models").status_code == 401
    with running_server(db_path, "--token", "visible") as (url, process):
        assert httpx.get(f"{url}/v2/models", headers={"Authorization": "Bearer visible"}).is_success
    assert "warning: --token is visible to every local user" in process.stdout.read().decode()


def run_mixed_load(url: str, db_path: Path, clients: int, requests: int) -> int:
    """``clients`` threads each sending ``requests`` requests for random models; every answer
    is checked against db.predict. Returns the number of correct answers."""
    rng = np.random.default_rng(1)
    cases = {m: [sample(m, int(rng.integers(1, 4)), rng) for _ in range(12)] for m in MODELS}
    expected = {m: expected_outputs(db_path, m, arrays) for m, arrays in cases.items()}

    def one_client(seed: int) -> int:
        chooser = random.Random(seed)
        correct = 0
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
            for _ in range(requests):
                model = chooser.choice(MODELS)
                k = chooser.randrange(len(cases[model]))
                got = infer(c, model, cases[model][k])
                np.testing.assert_array_equal(got, expected[model][k])  # mixed batches
                correct += 1
        return correct

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(one_client, range(clients)))


def test_concurrent_mixed_models(server: str, db_path: Path, client: httpx.Client) -> None:
    assert run_mixed_load(server, db_path, clients=16, requests=200) == 16 * 200
    metrics = client.get("/metrics").text
    for model in MODELS:
        assert f'weightdb_requests_total{{model="{model}",status="200"}}' in metrics
        assert f'weightdb_batch_rows_count{{model="{model}"}}' in metrics
    assert "weightdb_round_read_bytes_count" in metrics
    assert "weightdb_pool_read_bytes_total" in metrics
    assert 'weightdb_pool_resident_pages{sharing="2"}' in metrics  # mlp and mlp-copy share


def test_model_imported_by_another_process_is_served(
    client: httpx.Client, db_path: Path, exported_models: dict[str, Path]
) -> None:
    assert client.get("/v2/models/late").status_code == 404
    importer = (
        "import sys, weightdb; weightdb.connect(sys.argv[1]).import_model(sys.argv[2], 'late')"
    )
    subprocess.run(
        [sys.executable, "-c", importer, str(db_path), str(exported_models["cnn"])], check=True
    )
    array = sample("cnn", 2, np.random.default_rng(2))
    (expected,) = expected_outputs(db_path, "cnn", [array])
    np.testing.assert_array_equal(infer(client, "late", array), expected)
    assert "late" in {m["name"] for m in client.get("/v2/models").json()["models"]}


def test_full_queue_answers_429_and_slow_request_504(db_path: Path) -> None:
    """With one queue slot and a long batching wait, a queued request blocks the next (429)
    and outlives its timeout (504)."""
    options = ("--max-queue", "1", "--max-wait", "3s", "--timeout", "1s")
    with running_server(db_path, *options) as (url, _), httpx.Client(base_url=url) as c:
        results = {}
        first = threading.Thread(
            target=lambda: results.setdefault(
                "first", c.post("/v2/models/mlp/infer", json=mlp_body([1, 100]))
            )
        )
        first.start()
        while "weightdb_queue_depth 1.0" not in c.get("/metrics").text:
            time.sleep(0.02)
        rejected = c.post("/v2/models/mlp/infer", json=mlp_body([1, 100]))
        first.join()
    assert rejected.status_code == 429
    assert "retry later" in rejected.json()["error"]
    assert results["first"].status_code == 504
    assert "no answer within 1 s" in results["first"].json()["error"]


def test_sigkill_mid_load_loses_no_model(db_path: Path) -> None:
    with running_server(db_path) as (url, process):
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        c.post("/v2/models/mlp/infer", json=mlp_body([2, 100]))
                    except httpx.TransportError:
                        return

        workers = [threading.Thread(target=load) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stop.set()
        for worker in workers:
            worker.join()
    with weightdb.connect(db_path, create=False) as db:
        stored = {m.name for m in db.models()}
    assert set(MODELS) <= stored
    with running_server(db_path) as (url, _), httpx.Client(base_url=url) as c:
        assert {m["name"] for m in c.get("/v2/models").json()["models"]} == stored
        array = sample("text", 2, np.random.default_rng(3))
        (expected,) = expected_outputs(db_path, "text", [array])
        np.testing.assert_array_equal(infer(c, "text", array), expected)


STALLED = 300


def open_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (bounded by the socket timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_stalled_and_oversized_connections_do_not_starve_valid_requests(db_path: Path) -> None:
    """300 connections stalled mid-head while valid requests are answered; then each stalled one
    gets 408 and is closed. An oversized head gets 431, a stalled body 408, and a connection
    over the cap 503 with Retry-After."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * STALLED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * STALLED, hard), hard))
    options = ("--header-timeout", "3s", "--body-timeout", "1s")
    cap = STALLED + 20
    with running_server(db_path, *options, "--max-connections", str(cap)) as (url, _):
        stalled = [open_socket(url) for _ in range(STALLED)]
        try:
            for sock in stalled:
                sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: weightdb\r\n")
            # Served while every stalled connection is still open (they are closed after 3 s).
            with httpx.Client(base_url=url, timeout=2) as c:
                for rows in range(1, 21):
                    response = c.post("/v2/models/mlp/infer", json=mlp_body([rows, 100]))
                    assert response.status_code == 200
                    assert response.json()["outputs"][0]["shape"][0] == rows

            with open_socket(url) as big:
                big.sendall(b"GET /v2 HTTP/1.1\r\nHost: weightdb\r\nX-Big: " + b"a" * 200_000)
                big.sendall(b"\r\n\r\n")
                assert read_all(big).startswith(b"HTTP/1.1 431 ")
            with open_socket(url) as slow:
                head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: w\r\nContent-Length: 99\r\n"
                slow.sendall(head + b"\r\n" + b'{"inputs"')
                answer = read_all(slow)
                assert answer.startswith(b"HTTP/1.1 408 ")
                assert b"--body-timeout" in answer

            extra = [open_socket(url) for _ in range(cap - STALLED)]
            try:
                with open_socket(url) as over:
                    answer = read_all(over)
                assert answer.startswith(b"HTTP/1.1 503 ")
                assert b"Retry-After: 1" in answer and b"--max-connections" in answer
            finally:
                for sock in extra:
                    sock.close()

            for sock in stalled:
                answer = read_all(sock)
                assert answer.startswith(b"HTTP/1.1 408 ")
                assert b"--header-timeout" in answer
        finally:
            for sock in stalled:
                sock.close()


def test_nan_and_infinite_outputs_are_sent_as_strings_in_standard_json(tmp_path: Path) -> None:
    """y = log(x), z = -log(x): at x = 0, -1, 1 that is -inf, NaN, 0 and inf, NaN, -0."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]) for n in "yz"]
    nodes = [helper.make_node("Log", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "log", [x], outputs)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "log.onnx"
    )
    with weightdb.connect(tmp_path / "db") as db:
        db.import_model(tmp_path / "log.onnx", "log")
        with TestClient(create_app(db, ServerConfig())) as c:
            request = {
                "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [0, -1, 1]}]
            }
            response = c.post("/v2/models/log/infer", json=request)
    assert response.status_code == 200
    outputs = json.loads(response.text, parse_constant=lambda token: pytest.fail(token))
    data = {o["name"]: o["data"] for o in outputs["outputs"]}
    assert data == {"y": ["-Infinity", "NaN", 0.0], "z": ["Infinity", "NaN", -0.0]}
