"""Serving on Ray Serve: answers bit-identical to ``db.predict``, each model's requests on the
replica of its sharing group (whose pool reads only that group's pages), metrics per replica
and summed, the token as ``weightdb serve`` checks it, and a killed replica costing a retry,
not an error.

Two replicas serve two families of two MLPs each (a parent and a fine-tune of its last layer),
on the session's Ray cluster; Serve starts once for the module. Requests wait ``MAX_WAIT_MS``
in a replica for others to batch with, so a replica killed under load has requests in flight.
"""

import copy
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL
from prometheus_client.parser import text_string_to_metric_families
from torch_models import MLP
from typer.testing import CliRunner

import weightdb
from weightdb.cli import app
from weightdb.scaleout.table_predict import model_pages
from weightdb.server.config import ServerConfig

httpx = pytest.importorskip("httpx")
ray_serve = pytest.importorskip("ray.serve")
weightdb_ray = pytest.importorskip("weightdb.ray")

FAMILIES = ({"a", "a2"}, {"c", "c2"})
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUDGET = 4 << 20
MAX_WAIT_MS = 400
REPLICA_TITLE = "ray::ServeReplica:weightdb:weightdb-replica-{}"


@pytest.fixture(scope="module")
def families_db(tmp_path_factory) -> Path:
    """``a`` and ``c`` are unrelated MLPs; ``a2`` and ``c2`` retrain their last layer."""
    path = tmp_path_factory.mktemp("ray-serve") / "db"
    torch.manual_seed(11)
    with weightdb.connect(path, settings=SMALL) as db:
        for name in ("a", "c"):
            parent = MLP()
            child = copy.deepcopy(parent)
            with torch.no_grad():
                child.layers[4].weight.add_(0.25)
            for stored, module in ((name, parent), (f"{name}2", child)):
                db.from_torch(
                    module,
                    (torch.randn(2, 100),),
                    name=stored,
                    input_names=["x"],
                    output_names=["output"],
                )
    return path


@pytest.fixture(scope="module")
def url(ray_cluster, families_db):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield weightdb_ray.serve(
        families_db,
        replicas=2,
        budget=BUDGET,
        config=ServerConfig(token=TOKEN, max_wait_ms=MAX_WAIT_MS),
        port=port,
        replica_cpus=0.5,
    )
    ray_serve.shutdown()


def features(seed: int, rows: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 100)).astype(np.float32)


def infer(url: str, model: str, x: np.ndarray) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32"}]}
    body["inputs"][0]["data"] = x.ravel().tolist()
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, headers=AUTH, timeout=60)


def output(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    tensor = response.json()["outputs"][0]
    return np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def expected(db_path: Path, model: str, x: np.ndarray) -> np.ndarray:
    with weightdb.connect(db_path, create=False, read_only=True) as db:
        return db.predict(model, {"x": x})["output"]


def samples(text: str, name: str) -> dict[tuple, float]:
    """``name``'s samples in Prometheus text: sorted labels -> value."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def groups(url: str) -> dict[str, set[str]]:
    """Replica -> the models it has answered, from the per-replica metrics."""
    served: dict[str, set[str]] = {}
    text = httpx.get(f"{url}/metrics/replicas", headers=AUTH).text
    for labels in samples(text, "weightdb_requests_total"):
        served.setdefault(dict(labels)["replica"], set()).add(dict(labels)["model"])
    return served


def infer_each(url: str) -> None:
    """One request for every model, all at once."""
    models = sorted(set().union(*FAMILIES))
    with ThreadPoolExecutor(len(models)) as pool:
        for answer in pool.map(lambda m: infer(url, m, features(9)), models):
            output(answer)


def test_answers_are_bit_identical_to_db_predict(url, families_db):
    for seed, model in enumerate(sorted(set().union(*FAMILIES))):
        x = features(seed)
        np.testing.assert_array_equal(output(infer(url, model, x)), expected(families_db, model, x))


def test_each_replica_serves_one_sharing_group_and_reads_only_its_pages(url, families_db):
    infer_each(url)
    served = groups(url)
    per_replica = httpx.get(f"{url}/metrics/replicas", headers=AUTH).text
    assert sorted(served.values(), key=sorted) == list(FAMILIES)
    with weightdb.connect(families_db, create=False, read_only=True) as db:
        pages = model_pages(db, set().union(*FAMILIES))
    misses = samples(per_replica, "weightdb_pool_misses_total")
    budgets = samples(per_replica, "weightdb_pool_budget_bytes")
    for replica, models in served.items():
        group_pages = set().union(*(pages[m] for m in models))
        assert misses[(("replica", replica),)] == len(group_pages)
        assert budgets[(("replica", replica),)] == BUDGET
    summed = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert samples(summed, "weightdb_pool_misses_total") == {(): sum(misses.values())}
    assert samples(summed, "weightdb_pool_budget_bytes") == {(): 2 * BUDGET}


def test_the_token_guards_everything_but_the_health_probes(url):
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    for path in ("/metrics", "/metrics/replicas", "/v2/models", "/v2/models/a"):
        refused = httpx.get(f"{url}{path}")
        assert refused.status_code == 401, path
        assert refused.json()["error"].startswith("missing bearer token")
    wrong = httpx.get(f"{url}/v2/models", headers={"Authorization": "Bearer nope"})
    assert wrong.json() == {"error": "wrong bearer token"}


def _replica_pids(replica: int) -> set[int]:
    """Processes of this session's cluster (descendants of this process) running ``replica``."""
    title = REPLICA_TITLE.format(replica).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                pids.add(int(entry.name))
        except OSError:
            continue
    return {pid for pid in pids if _descends_from_us(pid)}


def _descends_from_us(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_a_killed_replica_costs_a_retry_not_an_error(url, families_db):
    """Replica 0 is killed while requests wait in its queue, mid-load."""
    models = sorted(set().union(*FAMILIES))
    requests = [(models[n % len(models)], features(100 + n)) for n in range(24)]
    before = _replica_pids(0)
    assert len(before) == 1, before
    killed, answered = threading.Event(), threading.Event()

    def kill_replica_zero() -> None:
        while not killed.is_set() and not answered.is_set():
            text = httpx.get(f"{url}/metrics/replicas", headers=AUTH, timeout=60).text
            if samples(text, "weightdb_queue_depth").get((("replica", "0"),), 0) > 0:
                os.kill(next(iter(before)), signal.SIGKILL)
                killed.set()

    killer = threading.Thread(target=kill_replica_zero, daemon=True)
    killer.start()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda request: infer(url, *request), requests))
    answered.set()  # a killer that never saw a queue stops polling
    killer.join()
    assert killed.is_set()
    for (model, x), answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(output(answer), expected(families_db, model, x))
    summed = httpx.get(f"{url}/metrics", headers=AUTH, timeout=60).text
    retried = samples(summed, "weightdb_router_retries_total")
    assert list(retried) == [(("replica", "0"),)]
    assert retried[(("replica", "0"),)] >= 1
    deadline = time.monotonic() + 60
    while not (_replica_pids(0) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _replica_pids(0) - before, "Serve did not restart the killed replica"


def test_replicas_need_ray_and_ray_takes_no_trace(families_db, tmp_path):
    runner = CliRunner()
    alone = runner.invoke(app, ["--db", str(families_db), "serve", "--replicas", "2"])
    assert str(alone.exception) == "--replicas needs --ray; add --ray or drop --replicas"
    traced = runner.invoke(
        app, ["--db", str(families_db), "serve", "--ray", "--trace", str(tmp_path)]
    )
    assert str(traced.exception) == "--trace records one process's pool; drop it with --ray"
