"""One system serving a request sequence, in a process of its own: the child program that the
scale and budgets suites run once per system (and budget), under ``harness.run_watched``.

    python -m benchmarks.serve_sequence CONFIG SYSTEM [--handshake]

The parent writes the config (``write_config``: model files, the database, the sequence, the
budget B) and calls ``serve``, which runs this program watched for memory and time and returns
what it measured. The systems (``SETUPS``):

- weightdb: ``weightdb.connect(db, budget=B)`` and ``db.predict`` per request (``weightdb-POLICY``
  with another replacement policy); the pages folder leaves the OS cache before every request.
- onnxruntime and pytorch: whole models kept LRU while their files fit B (``harness.LRUModels``),
  reloaded from their files on a miss.
- safetensors-mmap and pytorch-mmap: every model's safetensors file memory-mapped, numpy or
  PyTorch forward; the operating system is the cache.
- onnxruntime-all and pytorch-all: every model loaded at once, then the requests.

The child writes ``<system>.json`` beside the config after every request (so a killed child
leaves what it did) and its first answer to ``<system>.npy``, for ``agreement``.
"""

import argparse
import json
import mmap
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    LRUModels,
    report_idle_and_wait,
    rss,
    run_watched,
    summary,
)
from weightdb.memory_limit import drop_page_cache

SKEW = 0.9
"""Zipf exponent of the request sequences the scale and budgets suites serve."""
Predict = Callable[[str, dict[str, np.ndarray]], np.ndarray]


# -- the parent's side: config, run, outcome --------------------------------------------------


def write_config(fam, db_path: Path, sequence: list[str], budget: int, folder: Path) -> Path:
    """The children's config for serving ``sequence`` under ``budget``; they write their
    results beside it, in ``folder``."""
    from weightdb.zoo.families.scale import INPUT

    config = {
        "db": str(db_path),
        "models": {
            m["name"]: {k: str(fam.manifest_path.parent / m[k]) for k in ("onnx", "safetensors")}
            for m in fam.manifest["models"]
        },
        "requests": str(fam.manifest_path.parent / fam.manifest["extra"]["requests"]),
        "input": INPUT,
        "sequence": sequence,
        "budget": budget,
        "tmp": str(folder),
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def serve(
    system: str,
    config_path: Path,
    cap: int,
    timeout: float,
    memory_limit: int | None = None,
    disk_bytes_per_s: int | None = None,
) -> dict:
    """Run ``system`` over the sequence in a watched child (see ``harness.run_watched``; with
    ``memory_limit``, in a memory cgroup of that plus its idle RSS; with ``disk_bytes_per_s``,
    reading the disk that holds the models and the database at that rate at most) and collect
    its outcome."""
    from benchmarks.engine import THREAD_VARIABLES, THREADS

    load = os.getloadavg()[0]
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(THREADS))}
    command = [sys.executable, "-m", "benchmarks.serve_sequence", str(config_path), system]
    if memory_limit is not None:
        command.append("--handshake")
    ready = config_path.parent / f"{system}.ready"
    config = json.loads(config_path.read_text())
    disk = (Path(config["db"]), disk_bytes_per_s) if disk_bytes_per_s else None
    watched = run_watched(command, system, env, cap, timeout, memory_limit, ready, disk)
    result_path = config_path.parent / f"{system}.json"
    record = json.loads(result_path.read_text()) if result_path.is_file() else {}
    requests = len(config["sequence"])
    seconds = [r["seconds"] for r in record.get("requests", [])]
    error = watched.killed or record.get("error")
    if error is None and watched.returncode != 0:
        error = f"exit code {watched.returncode}"
    if error is None and len(seconds) < requests:
        error = f"served {len(seconds)} of {requests} requests"
    return {
        "ok": error is None,
        "error": error,
        "requests_done": len(seconds),
        "latency_s": summary(seconds) if seconds else None,
        "request_seconds": seconds,
        "setup_s": record.get("setup_seconds"),
        "total_s": watched.wall_s if watched.killed else record.get("seconds", watched.wall_s),
        "wall_s": watched.wall_s,
        "storage_read_bytes": watched.usage.ru_inblock * 512,
        "peak_rss_bytes": watched.usage.ru_maxrss * 1024,
        "peak_anon_bytes": watched.peak_anon_bytes,
        "rss_after_setup_bytes": record.get("rss_after_setup"),
        "loads": record.get("loads", 0),
        "hits": record.get("hits", 0),
        "loaded_models": record.get("loaded_models"),
        "pool": record.get("pool"),
        "load_before": load,
        "cgroup": watched.cgroup,
    }


def agreement(folder: Path, systems: tuple[str, ...]) -> dict[str, float | None]:
    """Max abs difference of each system's first answer from onnxruntime's (None if missing)."""
    reference = folder / "onnxruntime.npy"
    if not reference.is_file():
        return dict.fromkeys(systems)
    expected = np.load(reference)
    return {
        system: float(np.abs(np.load(folder / f"{system}.npy") - expected).max())
        if (folder / f"{system}.npy").is_file()
        else None
        for system in systems
    }


# -- the child: one system serving the whole sequence -----------------------------------------


def serve_sequence(config_path: Path, system: str, handshake: bool) -> None:
    """Serve the sequence with ``system``; results go to ``<tmp>/<system>.json`` after every
    step (so a killed child leaves what it did) and the first answer to ``<system>.npy``.
    With ``handshake``, once set up (before loading, for a setup that loads every model) it
    reports its idle RSS and waits for the parent's go (the parent sets its memory limit
    meanwhile, ``harness.run_watched``)."""
    config = json.loads(config_path.read_text())
    out = Path(config["tmp"]) / system
    record: dict[str, Any] = {"requests": [], "loads": 0, "hits": 0, "loaded_models": None}

    def save() -> None:
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(out.with_suffix(".json"))

    with np.load(config["requests"]) as split:
        feeds = {config["input"]: split[config["input"]]}
    settled = not handshake

    def settle() -> None:  # once: at the setup's call, or else after the setup
        nonlocal settled
        if not settled:
            settled = True
            report_idle_and_wait(out.with_suffix(".ready"))

    start = time.perf_counter()
    try:
        predict, before = SETUPS[system](config, record, save, settle)
        record["setup_seconds"] = time.perf_counter() - start
        record["rss_after_setup"] = rss()
        settle()
        for k, name in enumerate(config["sequence"]):
            if before:
                before()
            began = time.perf_counter()
            answer = predict(name, feeds)
            seconds = time.perf_counter() - began
            record["requests"].append({"model": name, "seconds": seconds})
            if k == 0:
                np.save(out.with_suffix(".npy"), answer)
            save()
            print(f"    {system}: request {k + 1}/{len(config['sequence'])} {name} "
                  f"{seconds:.2f}s, loads {record['loads']}, RSS "
                  f"{rss() / 2**30:.2f} GiB", flush=True)  # fmt: skip
    except Exception as error:  # a system that cannot serve the sequence is a result
        record["error"] = f"{type(error).__name__}: {error}"
    record["seconds"] = time.perf_counter() - start
    save()


Setup = Callable[
    [dict, dict, Callable[[], None], Callable[[], None]], tuple[Predict, Callable[[], None] | None]
]
"""A system's setup: (config, record, save, settle) -> (predict, before each request). A setup
that loads every model calls ``settle`` (the idle-RSS handshake) once its libraries are loaded
and before the models, so a memory limit counts the models against the budget."""
Runtime = tuple[Callable[[str], Any], Callable[[Any, dict[str, np.ndarray]], np.ndarray]]


# What weightdb keeps outside its pool while it answers a request of this family (batch 256 x
# 16 tokens): gathered rows, activations and panel copies, measured at about 60 MiB. Its pool
# gets the budget less this, so the process fits the memory every system is given; the other
# systems keep whole models, which leaves them such room below the budget by themselves.
WORKING_MEMORY = 64 << 20


def _weightdb(
    config: dict,
    record: dict,
    save: Callable[[], None],
    settle: Callable[[], None],
    policy: str | None = None,
):
    """``db.predict`` with its pool at the budget less ``WORKING_MEMORY``; the pages folder
    leaves the OS cache before every request (untimed), so a page that left the pool comes
    back from storage."""
    import weightdb
    from weightdb.database import pool_stats_dict

    pool = config["budget"] - WORKING_MEMORY
    db = weightdb.connect(config["db"], create=False, budget=pool, policy=policy)

    def predict(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (answer,) = db.predict(name, feeds).values()
        record["pool"] = pool_stats_dict(db.pool.stats())
        return answer

    return predict, lambda: drop_page_cache(Path(config["db"]) / "pages")


def _onnxruntime_runtime(config: dict) -> Runtime:
    """Load: an InferenceSession of the model's ONNX file (which maps its external data)."""
    from benchmarks.engine import _ort_session

    def load(name: str) -> Any:
        return _ort_session(Path(config["models"][name]["onnx"]))

    return load, lambda session, feeds: session.run(None, feeds)[0]


def _torch_module(state: dict):
    """The scale graph as an nn.Module: EmbeddingBag(mean), (Linear, ReLU) x 2, Linear; the
    family stores MatMul weights as (in, out), which Linear takes transposed (a view)."""
    import torch

    nn = torch.nn
    with torch.device("meta"):
        module = nn.Sequential(
            nn.EmbeddingBag(*state["embedding.weight"].shape, mode="mean"),
            nn.Linear(*state["fc1.weight"].shape),
            nn.ReLU(),
            nn.Linear(*state["fc2.weight"].shape),
            nn.ReLU(),
            nn.Linear(*state["out.weight"].shape),
        )
    weights = {"0.weight": state["embedding.weight"]}
    for index, layer in ((1, "fc1"), (3, "fc2"), (5, "out")):
        weights[f"{index}.weight"] = state[f"{layer}.weight"].T
        weights[f"{index}.bias"] = state[f"{layer}.bias"]
    module.load_state_dict(weights, assign=True)
    return module.eval()


def _pytorch_runtime(config: dict) -> Runtime:
    """Load: an nn.Module holding every weight of the safetensors file in memory, as
    ``module.load_state_dict(load_file(path))`` into a constructed module does (``load_file``
    alone returns tensors over the mapped file), without initializing the module first."""
    from safetensors.torch import load_file

    def load(name: str) -> Any:
        mapped = load_file(config["models"][name]["safetensors"])
        return _torch_module({key: tensor.clone() for key, tensor in mapped.items()})

    return load, _torch_run


def _torch_run(module: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """One request through an nn.Module of the scale graph."""
    import torch

    (ids,) = feeds.values()
    with torch.inference_mode():
        return module(torch.from_numpy(ids)).numpy()


RUNTIMES = {"onnxruntime": _onnxruntime_runtime, "pytorch": _pytorch_runtime}
LOADED_FROM = {"onnxruntime": ("onnx", "safetensors"), "pytorch": ("safetensors",)}


def _cached(runtime: str) -> Setup:
    """Models of ``runtime`` in an LRU cache of the budget's size."""
    make = RUNTIMES[runtime]

    def setup(config: dict, record: dict, save: Callable[[], None], settle: Callable[[], None]):
        load, run = make(config)
        models = config["models"]
        files = {n: [Path(models[n][k]) for k in LOADED_FROM[runtime]] for n in models}

        def size_of(name: str) -> int:
            return sum(path.stat().st_size for path in files[name])

        def evicted(name: str) -> None:
            for path in files[name]:
                drop_page_cache(path)

        cache = LRUModels(load, size_of, config["budget"], evicted)

        def predict(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
            model = cache.get(name)
            record["loads"], record["hits"] = cache.loads, cache.hits
            return run(model, feeds)

        return predict, None

    return setup


def _everything(runtime: str) -> Setup:
    """Every model of ``runtime`` loaded at once, before the first request."""
    make = RUNTIMES[runtime]

    def setup(config: dict, record: dict, save: Callable[[], None], settle: Callable[[], None]):
        load, run = make(config)
        settle()
        models = {}
        record["loaded_models"] = 0
        for name in config["models"]:
            models[name] = load(name)
            record["loaded_models"] = len(models)
            save()
            print(f"    {runtime}-all: {len(models)}/{len(config['models'])} models loaded, "
                  f"RSS {rss() / 2**30:.2f} GiB", flush=True)  # fmt: skip
        return lambda name, feeds: run(models[name], feeds), None

    return setup


def _mapped(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy view of the file mapped into memory."""
    from weightdb.ingest.safetensors_format import MAX_HEADER_BYTES, read_header

    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    claimed = int.from_bytes(mapped[:8], "little")
    header_len, header = read_header(
        path, len(mapped), mapped[: 8 + min(claimed, MAX_HEADER_BYTES)]
    )
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        array = np.frombuffer(mapped, np.float32, (end - begin) // 4, 8 + header_len + begin)
        arrays[name] = array.reshape(info["shape"])
    return arrays


def _safetensors_mmap(
    config: dict, record: dict, save: Callable[[], None], settle: Callable[[], None]
):
    """Every model's file mapped; the OS pages in the rows and weights a request touches."""
    weights = {name: _mapped(Path(m["safetensors"])) for name, m in config["models"].items()}
    record["loaded_models"] = len(weights)

    def predict(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        w = weights[name]
        (ids,) = feeds.values()
        x = w["embedding.weight"][ids].mean(axis=1)  # Gather, ReduceMean over tokens
        x = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0)
        x = np.maximum(x @ w["fc2.weight"] + w["fc2.bias"], 0)
        return x @ w["out.weight"] + w["out.bias"]

    return predict, None


def _pytorch_mmap(config: dict, record: dict, save: Callable[[], None], settle: Callable[[], None]):
    """Every model an nn.Module over its safetensors file mapped into memory (``load_file``
    returns tensors over the mapping; ``assign`` keeps them); the OS pages weights in."""
    from safetensors.torch import load_file

    modules = {
        name: _torch_module(load_file(m["safetensors"])) for name, m in config["models"].items()
    }
    record["loaded_models"] = len(modules)
    return lambda name, feeds: _torch_run(modules[name], feeds), None


POLICY_RUNS = ("lru", "lfu", "netsdb-cost")
"""Replacement policies weightdb also serves with (``weightdb-POLICY``), beside its default."""

SETUPS: dict[str, Setup] = {
    "weightdb": _weightdb,
    **{f"weightdb-{policy}": partial(_weightdb, policy=policy) for policy in POLICY_RUNS},
    "pytorch-mmap": _pytorch_mmap,
    "onnxruntime": _cached("onnxruntime"),
    "pytorch": _cached("pytorch"),
    "safetensors-mmap": _safetensors_mmap,
    "onnxruntime-all": _everything("onnxruntime"),
    "pytorch-all": _everything("pytorch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="written by write_config")
    parser.add_argument("system", choices=list(SETUPS))
    parser.add_argument("--handshake", action="store_true", help="wait for a memory limit")
    args = parser.parse_args()
    serve_sequence(args.config, args.system, args.handshake)


if __name__ == "__main__":
    main()
