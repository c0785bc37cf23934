"""One system of the demo's out-of-memory comparison, serving a request sequence in its own
process: ``python -m weightdb.demo.serving_child CONFIG SYSTEM``.

A process of its own gives each system its own memory cgroup (when the demo may create one)
and its own resident memory, so neither system's pages help the other. Once set up, the child
writes its idle resident set to ``<out>.ready`` and waits for ``<out>.go``: the demo sets the
cgroup's limit in between, so the limit is the budget plus what the process holds before it
reads any weights. Results go to ``<out>.json``; the first answer to ``<out>.npy``.

The PyTorch baseline is what a team without weightdb runs: each model's safetensors file
loaded on demand (``safetensors.torch.load_file``), an LRU of whole models that fit the budget,
and the zoo's scale graph (embedding bag, then a ReLU MLP) as torch operations. Both systems
get the same number of threads (``threads``; BLAS and OpenMP read it from the environment).
"""

import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

Predict = Callable[[str, np.ndarray], np.ndarray]


def _weightdb(config: dict, record: dict) -> Predict:
    from weightdb.database import connect

    db = connect(config["db"], budget=config["budget_bytes"], read_only=True)

    seen: set[str] = set()

    def predict(name: str, ids: np.ndarray) -> np.ndarray:
        record["cold"].append(name not in seen)  # a model's first request prepares its plan
        seen.add(name)
        output = next(iter(db.predict(name, {"input_ids": ids}).values()))
        record["pool_bytes_read"] = db.pool.stats().bytes_read
        return output

    return predict


def _pytorch(config: dict, record: dict) -> Predict:
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(config["threads"])
    files = config["safetensors"]
    capacity = max(1, config["budget_bytes"] // max(config["model_bytes"].values()))
    loaded: OrderedDict[str, dict] = OrderedDict()

    def weights(name: str) -> dict:
        record["cold"].append(name not in loaded)
        if name in loaded:
            loaded.move_to_end(name)
            return loaded[name]
        while len(loaded) >= capacity:  # evict before loading: the new model must fit too
            loaded.popitem(last=False)
        loaded[name] = load_file(files[name])
        return loaded[name]

    def predict(name: str, ids: np.ndarray) -> np.ndarray:
        w = weights(name)
        with torch.no_grad():
            x = torch.nn.functional.embedding(torch.from_numpy(ids), w["embedding.weight"])
            x = x.mean(1)
            for layer in ("fc1", "fc2"):
                x = torch.relu(x @ w[f"{layer}.weight"] + w[f"{layer}.bias"])
            return (x @ w["out.weight"] + w["out.bias"]).numpy()

    record["capacity_models"] = capacity
    return predict


SETUPS = {"weightdb": _weightdb, "pytorch": _pytorch}


def resident_bytes() -> int:
    """This process's resident set (VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def serve(config_path: Path, system: str) -> None:
    """Serve the configured sequence with ``system``, recording each request's seconds and
    whether it was cold (PyTorch: it loaded the model; weightdb: the model's first request)."""
    config = json.loads(config_path.read_text())
    out = Path(config["out_dir"]) / system
    record: dict = {"seconds": [], "cold": []}
    with np.load(config["requests"]) as split:
        requests = split["input_ids"]
    predict = SETUPS[system](config, record)
    parent = os.getppid()
    _publish(out.with_suffix(".ready"), {"rss": resident_bytes()})
    while not out.with_suffix(".go").is_file():
        if os.getppid() != parent:
            sys.exit("the demo that started this process has ended")
        time.sleep(config["poll_seconds"])
    rows = config["rows_per_request"]
    for k, name in enumerate(config["sequence"]):
        start = k * rows % (len(requests) - rows + 1)
        began = time.perf_counter()
        answer = predict(name, requests[start : start + rows])
        record["seconds"].append(time.perf_counter() - began)
        if k == 0:
            np.save(out.with_suffix(".npy"), answer)
    _publish(out.with_suffix(".json"), record)


def _publish(path: Path, data: dict) -> None:
    """Write ``data`` as JSON so the parent never reads the file half-written."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2])
