"""The server as the standard KServe v2 client, ``tritonclient[http]``, sees it: health,
metadata, JSON and binary tensors (FP32, INT64, BF16), the statistics and repository-index
extensions; dtype casts allowed when nothing is lost in kind, refused otherwise (over HTTP and
the CLI's ``predict``); malformed binary requests answered 400 with one line."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file
from test_server import running_server
from tritonclient.utils import InferenceServerException

import weightdb
from weightdb.engine import InvalidInputError
from weightdb.engine.input_dtypes import convert_input

HEADER = "Inference-Header-Content-Length"


def save_graph(path: Path, nodes, inputs, outputs, weights: dict[str, np.ndarray]) -> Path:
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    """``dense``: y = x @ W (x FP32 [batch, 64]); ``embed``: y = E[ids] (ids INT64 [batch,
    tokens]); ``weights``: a safetensors file, stored without a graph."""
    folder = tmp_path_factory.mktemp("kserve")
    rng = np.random.default_rng(0)
    dense = save_graph(
        folder / "dense.onnx",
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        {"W": rng.standard_normal((64, 8)).astype(np.float32)},
    )
    embed = save_graph(
        folder / "embed.onnx",
        [helper.make_node("Gather", ["E", "ids"], ["y"])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 8])],
        {"E": rng.standard_normal((100, 8)).astype(np.float32)},
    )
    save_file({"w": np.ones((16, 16), np.float32)}, folder / "weights.safetensors")
    path = folder / "db"
    with weightdb.connect(path) as db:
        db.import_model(dense, "dense")
        db.import_model(dense, "dense-stats")  # requested only by the statistics test
        db.import_model(embed, "embed")
        db.import_model(folder / "weights.safetensors", "weights")
    return path


@pytest.fixture(scope="module")
def server(db_path: Path) -> Iterator[str]:
    with running_server(db_path) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def expected(db_path: Path, model: str, name: str, array: np.ndarray) -> np.ndarray:
    with weightdb.connect(db_path, create=False) as db:
        return db.predict(model, {name: array})["y"]


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(
        array, binary_data=binary
    )


def test_health_metadata_and_repository_index(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("dense") and not client.is_model_ready("weights")
    assert {"binary_tensor_data", "statistics"} <= set(client.get_server_metadata()["extensions"])
    metadata = client.get_model_metadata("embed")
    assert metadata["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, -1, 8]}]
    assert client.get_model_repository_index() == [
        {"name": "dense", "state": "READY", "reason": ""},
        {"name": "dense-stats", "state": "READY", "reason": ""},
        {"name": "embed", "state": "READY", "reason": ""},
        {
            "name": "weights",
            "state": "UNAVAILABLE",
            "reason": "stored without a graph, so it cannot predict",
        },
    ]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True, None], ids=["json-out", "binary-out", "all"])
def test_fp32_and_int64_inference_equals_db_predict(
    client: triton.InferenceServerClient, db_path: Path, binary_in: bool, binary_out: bool | None
) -> None:
    """``binary_out`` None requests no output by name: tritonclient then asks for every output
    as binary data (``binary_data_output``)."""
    rng = np.random.default_rng(1)
    cases = [
        ("dense", "x", "FP32", rng.standard_normal((3, 64)).astype(np.float32)),
        ("embed", "ids", "INT64", rng.integers(0, 100, (2, 5), dtype=np.int64)),
    ]
    for model, name, datatype, array in cases:
        outputs = None if binary_out is None else [triton.InferRequestedOutput("y", binary_out)]
        result = client.infer(model, [tensor(name, array, datatype, binary_in)], outputs=outputs)
        got = result.as_numpy("y")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected(db_path, model, name, array))
        sent_binary = result.get_output("y").get("parameters", {}).get("binary_data_size")
        assert sent_binary == (None if binary_out is False else got.nbytes)


def metric_lines(server: str, prefix: str) -> list[str]:
    return [
        line for line in httpx.get(f"{server}/metrics").text.splitlines() if line.startswith(prefix)
    ]


def test_lossless_casts_are_served_and_counted(
    client: triton.InferenceServerClient, server: str, db_path: Path
) -> None:
    """BF16 (binary only, as the protocol allows), FP16 and FP64 features for a float32 input, INT32
    ids for an int64 one: answered as if sent in the model's dtype, each cast counted once."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((2, 64))
    casts = (
        (features.astype(ml_dtypes.bfloat16), "BF16"),
        (features.astype(np.float16), "FP16"),
        (features, "FP64"),
    )
    for array, datatype in casts:
        result = client.infer("dense", [tensor("x", array, datatype, True)])
        want = expected(db_path, "dense", "x", array.astype(np.float32))
        np.testing.assert_array_equal(result.as_numpy("y"), want)
    ids = rng.integers(0, 100, (2, 5), dtype=np.int32)
    result = client.infer("embed", [tensor("ids", ids, "INT32", False)])
    want = expected(db_path, "embed", "ids", ids.astype(np.int64))
    np.testing.assert_array_equal(result.as_numpy("y"), want)
    labels = (
        'expected="float32",given="bfloat16",input="x",model="dense"',
        'expected="float32",given="float16",input="x",model="dense"',
        'expected="float32",given="float64",input="x",model="dense"',
        'expected="int64",given="int32",input="ids",model="embed"',
    )
    assert metric_lines(server, "weightdb_input_casts_total") == [
        f"weightdb_input_casts_total{{{label}}} 1.0" for label in labels
    ]


@pytest.mark.parametrize(
    ("model", "name", "array", "datatype", "message"),
    [
        (
            "embed",
            "ids",
            np.array([[1.0, 2.0]], np.float32),
            "FP32",
            "input 'ids' must be int64, got float32: floats are not cast to integers",
        ),
        (
            "dense",
            "x",
            np.zeros((1, 64), np.int64),
            "INT64",
            "input 'x' must be float32, got int64: integers are not cast to floats",
        ),
        (
            "dense",
            "x",
            np.zeros((1, 64), bool),
            "BOOL",
            "input 'x' must be float32, got bool: send float32",
        ),
        (
            "embed",
            "ids",
            np.array([[1, 2**63]], np.uint64),
            "UINT64",
            "input 'ids' must be int64, got uint64 with a value (9223372036854775808) outside "
            "int64's range",
        ),
    ],
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_casts_that_lose_kind_are_refused_naming_input_and_dtypes(
    client: triton.InferenceServerClient, model, name, array, datatype, message, binary
) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.infer(model, [tensor(name, array, datatype, binary)])
    assert (refused.value.status(), refused.value.message()) == ("400", message)


def test_a_float_outside_the_model_dtype_is_refused() -> None:
    """float32 1e5 has no float16 value: refused rather than sent on as infinity."""
    features = np.array([1.0, 1e5], np.float32)
    with pytest.raises(InvalidInputError) as refused:
        convert_input("x", features, np.dtype(np.float16))
    assert str(refused.value) == (
        "input 'x' must be float16, got float32 with a value (100000.0) outside float16's range"
    )
    assert convert_input("x", features[:1], np.dtype(np.float16)).dtype == np.float16


def test_a_non_integral_json_value_for_ids_is_refused(server: str) -> None:
    """JSON has one number type: 3.0 is taken as the integer 3, 1.5 is refused."""

    def ask(data: list) -> httpx.Response:
        request = {"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": data}]}
        return httpx.post(f"{server}/v2/models/embed/infer", json=request)

    assert ask([3.0, 4]).status_code == 200
    refused = ask([3, 1.5])
    assert (refused.status_code, refused.json()) == (
        400,
        {
            "error": "input 'ids': datatype INT64 but data holds a non-integral value (1.5); "
            "integer inputs take whole numbers only"
        },
    )


def test_statistics_count_requests_rows_and_runs(
    client: triton.InferenceServerClient, server: str
) -> None:
    """Three requests of 2 rows, one after another (each its own run), and one refused."""
    features = np.ones((2, 64), np.float32)
    for _ in range(3):
        client.infer("dense-stats", [tensor("x", features, "FP32", True)])
    with pytest.raises(InferenceServerException):
        client.infer("dense-stats", [tensor("x", np.ones((2, 63), np.float32), "FP32", True)])

    (stats,) = client.get_inference_statistics("dense-stats")["model_stats"]
    counts = {stage: value["count"] for stage, value in stats["inference_stats"].items()}
    assert counts == {
        "success": 3,
        "fail": 1,
        "queue": 3,
        "compute_input": 3,  # the refused request failed while its inputs were checked
        "compute_infer": 3,
        "compute_output": 3,
        "cache_hit": 0,
        "cache_miss": 0,
    }
    assert (stats["name"], stats["inference_count"], stats["execution_count"]) == (
        "dense-stats",
        6,
        3,
    )
    assert all(stats["inference_stats"][stage]["ns"] > 0 for stage in ("success", "compute_infer"))
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (2, 3)
    ]
    assert stats["last_inference"] > 0

    every = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in every] == ["dense", "dense-stats", "embed", "weights"]
    assert every[1] == client.get_inference_statistics("dense-stats")["model_stats"][0]
    with pytest.raises(InferenceServerException) as missing:
        client.get_inference_statistics("nope")
    assert missing.value.status() == "404"


def binary_request(header: dict, *chunks: bytes, length: str | None = None) -> tuple[bytes, dict]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(chunks), {HEADER: length or str(len(encoded))}


def dense_header(size: int = 4 * 64, shape: list[int] | None = None, **extra) -> dict:
    parameters = {"binary_data_size": size}
    tensor = {"name": "x", "shape": shape or [1, 64], "datatype": "FP32", "parameters": parameters}
    return {"inputs": [{**tensor, **extra}]}


ROW = np.ones(64, np.float32).tobytes()


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (
            ROW,
            {HEADER: "-1"},
            "Inference-Header-Content-Length must be a non-negative integer (the JSON header's "
            "length in bytes), got '-1'",
        ),
        (
            ROW,
            {HEADER: "ten"},
            "Inference-Header-Content-Length must be a non-negative integer (the JSON header's "
            "length in bytes), got 'ten'",
        ),
        (
            b"{}",
            {HEADER: "99"},
            "Inference-Header-Content-Length is 99 but the body has only 2 bytes",
        ),
        (
            *binary_request(dense_header(), ROW, b"\0\0\0\0"),
            "the body has 260 bytes after the JSON header but the inputs' binary_data_size add "
            "up to 256",
        ),
        (
            *binary_request(dense_header(size=512), ROW),
            "input 'x': binary_data_size 512 runs past the end of the body (the binary part "
            "after the Inference-Header-Content-Length bytes of JSON is 256 bytes, 0 used by "
            "earlier inputs)",
        ),
        (
            *binary_request(dense_header(size=-4), ROW),
            "input 'x': binary_data_size is negative (-4)",
        ),
        (
            *binary_request(dense_header(size="256"), ROW),
            "inputs.0.parameters.binary_data_size must be an integer, got '256'",
        ),
        (
            *binary_request(dense_header(shape=[2, 64]), ROW),
            "input 'x': shape [2, 64] of FP32 needs 512 bytes, binary_data_size is 256",
        ),
        (
            *binary_request(dense_header(data=[0] * 64), ROW),
            "input 'x' has both 'data' and binary_data_size; send one",
        ),
        (
            *binary_request({**dense_header(), "parameters": {"binary_data_output": 1}}, ROW),
            "parameters.binary_data_output must be true or false, got 1",
        ),
        (
            *binary_request({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32"}]}),
            "input 'x' has no 'data' and no parameters.binary_data_size",
        ),
        (
            json.dumps(dense_header()).encode(),
            {},
            "input 'x' has binary_data_size but the request has no "
            "Inference-Header-Content-Length header",
        ),
    ],
)
def test_malformed_binary_requests_get_one_line_400(
    server: str, body: bytes, headers: dict, message: str
) -> None:
    response = httpx.post(f"{server}/v2/models/dense/infer", content=body, headers=headers)
    assert (response.status_code, response.json()) == (400, {"error": message})


def test_fuzzed_binary_requests_are_answered_200_or_one_line_400(server: str) -> None:
    """A valid two-row binary request, cut short, extended, or with a wrong header length or
    flipped bytes: never a 500, never a traceback."""
    body, headers = binary_request(dense_header(size=2 * 256, shape=[2, 64]), ROW, ROW)
    json_length = int(headers[HEADER])
    rng = np.random.default_rng(3)
    statuses = set()
    with httpx.Client(base_url=server, timeout=60) as c:
        for _ in range(60):
            mutated, length = bytearray(body), json_length
            match rng.integers(4):
                case 0:
                    mutated = mutated[: rng.integers(len(body))]
                case 1:
                    mutated += bytes(rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8))
                case 2:
                    length = int(rng.integers(0, len(body) + 10))
                case 3:
                    for position in rng.integers(0, len(body), 3):
                        mutated[position] = int(rng.integers(256))
            response = c.post(
                "/v2/models/dense/infer", content=bytes(mutated), headers={HEADER: str(length)}
            )
            statuses.add(response.status_code)
            assert response.status_code in (200, 400), response.text
            if response.status_code == 400:
                error = response.json()["error"]
                assert "\n" not in error and "Traceback" not in error
    assert statuses == {200, 400}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weightdb", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("dense", {"x": np.zeros((1, 64), np.float64)}, None),
        ("embed", {"ids": np.zeros((1, 3), np.int32)}, None),
        (
            "dense",
            {"x": np.zeros((1, 64), np.int64)},
            "input 'x' must be float32, got int64: integers are not cast to floats",
        ),
        (
            "embed",
            {"ids": np.zeros((1, 3), np.float64)},
            "input 'ids' must be int64, got float64: floats are not cast to integers",
        ),
    ],
)
def test_cli_predict_casts_npz_inputs_only_when_nothing_is_lost(
    db_path: Path, tmp_path: Path, model: str, inputs: dict, message: str | None
) -> None:
    np.savez(tmp_path / "in.npz", **inputs)
    out = tmp_path / "out.npz"
    result = cli(
        "--db",
        str(db_path),
        "predict",
        model,
        "--input",
        str(tmp_path / "in.npz"),
        "--output",
        str(out),
    )
    if message is None:
        assert result.returncode == 0, result.stderr
        ((name, array),) = inputs.items()
        want = expected(db_path, model, name, array.astype(np.float32 if name == "x" else np.int64))
        np.testing.assert_array_equal(np.load(out)["y"], want)
    else:
        assert result.returncode != 0
        assert message in result.stderr
