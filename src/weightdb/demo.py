"""`weightdb demo`: the tour a new user runs first, end to end on an embedded database.

It builds the small digits-cnn family of the zoo (a base CNN and five fine-tunes, some with
frozen convolutions), imports it, deduplicates it under a 1-point accuracy budget, repacks the
pages, scores a feature table with every model in SQL, replays a Zipf workload under each
buffer-pool policy, serves a few requests over HTTP, times prediction against PyTorch, and
ends with a summary. Every number printed is measured in this run.
"""

import json
import os
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from weightdb.caching.simulate import Budget, simulate
from weightdb.caching.trace import read_trace
from weightdb.caching.workload import request_sequence
from weightdb.cli.common import repack_table
from weightdb.database import Database, connect
from weightdb.errors import WeightDBError
from weightdb.storage.policies import DEFAULT_POLICY, POLICIES
from weightdb.storage.settings import Settings
from weightdb.units import format_size

FAMILY = "digits-cnn"
MAX_DROP = 0.01
# Small blocks and pages suit a family of 40 KiB models: sharing and packing become visible.
SETTINGS = Settings(block_rows=32, block_cols=32, page_size=16 * 1024)
SERVER_START_SECONDS = 30.0


def run_demo(path: Path, console: Console) -> None:
    if path.exists():
        shutil.rmtree(path)
    summary: dict[str, str] = {}
    console.rule(f"[bold]weightdb demo: the {FAMILY} family")
    family = _build_family(path.parent / f"{path.name}-zoo", console)
    with connect(path, settings=SETTINGS) as db:
        _step(console, "1. import: identical blocks are stored once")
        _import(db, family, console, summary)
        _step(console, f"2. deduplicate approximately, at most {MAX_DROP:.0%} accuracy lost")
        _deduplicate(db, family, console, summary)
        _step(console, "3. repack: every model reads only pages holding its own blocks")
        _pack(db, console, summary)
        _step(console, "4. score a feature table with every model in SQL")
        _score_in_sql(db, family, console)
        _step(console, "5. a Zipf workload with a buffer pool of a quarter of the weights")
        _caching(db, family, path, console, summary)
        _step(console, "6. serve over HTTP (KServe v2) and check the answers")
        _serve(db, family, console)
        _step(console, "7. latency against PyTorch on the same model")
        _latency(db, family, console, summary)
    console.rule("[bold]summary")
    table = Table("what", "result")
    for key, value in summary.items():
        table.add_row(key, value)
    console.print(table)
    console.print(f"database left at {path}; try `weightdb --db {path} stats`")


def _step(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def _build_family(out: Path, console: Console) -> dict:
    from weightdb.zoo.build import build_family

    console.print(f"building the {FAMILY} family (small) into {out} (cached after the first run)")
    result = build_family(FAMILY, out, size="small")
    family = json.loads(result.manifest.read_text())
    family["dir"] = result.manifest.parent
    return family


def _import(db: Database, family: dict, console: Console, summary: dict) -> None:
    table = Table("model", "parent", "frozen", "bytes", "new bytes stored")
    for model in family["models"]:
        info = db.import_model(family["dir"] / model["onnx"], model["name"])
        table.add_row(
            model["name"],
            model["parent"] or "-",
            ", ".join(model["frozen"]) or "-",
            format_size(info.logical_bytes),
            format_size(info.new_block_bytes),
        )
    console.print(table)
    stats = db.stats()
    summary["bytes after import"] = (
        f"{format_size(stats['logical_bytes'])} of models stored in "
        f"{format_size(stats['stored_bytes'])} ({stats['dedup_ratio']:.2f}x, exact)"
    )


def _deduplicate(db: Database, family: dict, console: Console, summary: dict) -> None:
    report = db.deduplicate(eval_spec=family["dir"] / "family.json", max_drop=MAX_DROP)
    table = Table("model", "test accuracy before", "after", "blocks replaced")
    for name, model in report.models.items():
        table.add_row(
            name, f"{model.test_before:.4f}", f"{model.test_after:.4f}", str(model.blocks_replaced)
        )
    console.print(table)
    worst = max((m.test_before - m.test_after for m in report.models.values()), default=0.0)
    console.print(
        f"stored {format_size(report.stored_bytes_before)} -> "
        f"{format_size(report.stored_bytes_after)} ({report.reduction:.1%} less) in "
        f"{report.seconds:.1f}s, {report.evaluations} accuracy checks on validation splits"
    )
    for note in report.notes:
        console.print(f"note: {note}")
    stats = db.stats()
    summary["bytes after dedup"] = (
        f"{format_size(stats['logical_bytes'])} stored in {format_size(stats['stored_bytes'])} "
        f"({stats['dedup_ratio']:.2f}x)"
    )
    summary["accuracy kept"] = f"worst test drop {worst:+.2%} (budget {MAX_DROP:.0%})"


def _pack(db: Database, console: Console, summary: dict) -> None:
    report = db.pack()
    console.print(repack_table(report))
    read_before = sum(m["bytes"] for m in report.pages_read_before.values())
    read_after = sum(m["bytes"] for m in report.pages_read_after.values())
    summary["pages"] = (
        f"{report.pages_before} -> {report.pages_after} pages (lower bound "
        f"{report.lower_bound_pages}, {report.copied_blocks} blocks copied); bytes read to "
        "load every model once "
        f"{format_size(read_before)} -> {format_size(read_after)}"
    )


def _test_split(family: dict, model: dict) -> tuple[np.ndarray, np.ndarray]:
    with np.load(family["dir"] / model["test"]) as split:
        return split["pixels"].astype(np.float32), split["labels"]


def _score_in_sql(db: Database, family: dict, console: Console) -> None:
    tasks, rows = {}, {"task": [], "pixels": [], "label": []}
    for model in family["models"]:
        if model["task"] in tasks:
            continue
        pixels, labels = _test_split(family, model)
        tasks[model["task"]] = len(labels)
        rows["task"] += [model["task"]] * len(labels)
        rows["pixels"] += list(pixels.reshape(len(labels), -1))
        rows["label"] += labels.tolist()
    db.load_table("digits_test", pa.table(rows))
    model_tasks = {
        "model": [m["name"] for m in family["models"]],
        "task": [m["task"] for m in family["models"]],
    }
    db.load_table("model_tasks", pa.table(model_tasks))
    query = (
        "SELECT mt.model, count(*) AS rows, "
        "round(avg((predict_label(mt.model, t.pixels) = t.label)::INT), 4) AS accuracy "
        "FROM digits_test t JOIN model_tasks mt USING (task) GROUP BY mt.model ORDER BY 1"
    )
    console.print(f"[bold]SQL[/]: {query}")
    result = db.sql(query)
    table = Table(*result.column_names)
    for row in result.to_pylist():
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def _caching(db: Database, family: dict, path: Path, console: Console, summary: dict) -> None:
    names = [m["name"] for m in family["models"]]
    inputs = {m["name"]: _test_split(family, m)[0][:8] for m in family["models"]}
    sequence = request_sequence(names, count=120, skew=0.9, seed=1)
    budget = max(db.stats()["stored_bytes"] // 4, _largest_page(db))
    trace_path = path / "demo-trace.json"
    with connect(db.path, budget=budget) as limited, limited.record_trace(trace_path):
        for name in sequence:
            limited.predict(name, {"pixels": inputs[name]})
    trace = read_trace(trace_path)
    table = Table("policy", "hit ratio", "bytes read", "bytes vs opt")
    results = {p: simulate(trace, p, Budget(bytes=budget)) for p in [*POLICIES, "opt"]}
    for policy, result in results.items():
        table.add_row(
            policy,
            f"{result.hit_ratio:.3f}",
            format_size(result.bytes_read),
            f"{result.bytes_read / max(results['opt'].bytes_read, 1):.2f}x",
        )
    console.print(
        f"{len(sequence)} requests (Zipf 0.9), {len(trace.requests)} page requests, "
        f"budget {format_size(budget)}; replayed offline under every policy:"
    )
    console.print(table)
    console.print(
        f"(a toy: the pool holds a few of the {len(trace.page_bytes)} pages read, so one eviction "
        "can decide the ranking; benchmarks/results/caching.md compares the policies on "
        "recorded serving traces of the zoo families)"
    )
    ours = results[DEFAULT_POLICY]
    summary["hit ratio"] = (
        f"{ours.hit_ratio:.3f} with the {DEFAULT_POLICY} policy at a quarter of the weights "
        f"(LRU {results['lru'].hit_ratio:.3f}, optimum {results['opt'].hit_ratio:.3f})"
    )


def _largest_page(db: Database) -> int:
    return db.store.catalog.largest_page_bytes()


def _serve(db: Database, family: dict, console: Console) -> None:
    import httpx
    import uvicorn

    from weightdb.server.app import create_app
    from weightdb.server.config import ServerConfig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(db, ServerConfig()), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_started(server, thread, port)
        table = Table("request", "status", "equals db.predict")
        with httpx.Client(base_url=url, timeout=30) as client:
            ready = client.get("/v2/health/ready")
            table.add_row("GET /v2/health/ready", str(ready.status_code), "-")
            for model in family["models"][:3]:
                pixels = _test_split(family, model)[0][:2]
                body = {
                    "inputs": [
                        {
                            "name": "pixels",
                            "shape": list(pixels.shape),
                            "datatype": "FP32",
                            "data": pixels.reshape(-1).tolist(),
                        }
                    ]
                }
                response = client.post(f"/v2/models/{model['name']}/infer", json=body)
                output = response.json()["outputs"][0]
                got = np.array(output["data"], np.float32).reshape(output["shape"])
                expected = next(iter(db.predict(model["name"], {"pixels": pixels}).values()))
                table.add_row(
                    f"POST /v2/models/{model['name']}/infer",
                    str(response.status_code),
                    str(bool(np.array_equal(got, expected))),
                )
            missing = client.post("/v2/models/no-such-model/infer", json=body)
            table.add_row("POST /v2/models/no-such-model/infer", str(missing.status_code), "-")
        console.print(f"server on {url}; OpenAPI at {url}/docs")
        console.print(table)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_until_started(server, thread: threading.Thread, port: int) -> None:
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


def _latency(db: Database, family: dict, console: Console, summary: dict) -> None:
    module = _torch_module(family, "base")
    pixels = _test_split(family, family["models"][0])[0]
    table = Table("batch", "weightdb p50 ms", "PyTorch p50 ms", "ratio")
    ratios = []
    for batch in (1, 64):
        x = pixels[:batch]
        ours = _p50(lambda x=x: db.predict("base", {"pixels": x}))
        theirs = _p50(lambda x=x: _torch_predict(module, x))
        ratios.append(ours / theirs)
        table.add_row(
            str(batch), f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{ours / theirs:.2f}x"
        )
    load, cpus = os.getloadavg()[0], os.cpu_count()
    console.print(
        f"median of 30 runs each, in memory, same process and threads; load average {load:.1f} "
        f"on {cpus} CPUs (on a busy machine PyTorch's threads wait for cores and the ratio "
        "means little):"
    )
    console.print(table)
    summary["latency vs PyTorch"] = (
        f"{ratios[0]:.2f}x at batch 1, {ratios[1]:.2f}x at batch 64 (p50; below 1 is faster)"
    )


def _p50(run, repeats: int = 30) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_module(family: dict, name: str):
    """The zoo's PyTorch class for ``name`` with its weights from the safetensors file."""
    from safetensors.torch import load_file

    from weightdb.zoo.families.digits_cnn import DigitsCNN

    model = next(m for m in family["models"] if m["name"] == name)
    state = {
        key.removesuffix(".T"): value.T if key.endswith(".T") else value
        for key, value in load_file(family["dir"] / model["safetensors"]).items()
    }
    channels = (state["conv1.weight"].shape[0], state["conv2.weight"].shape[0])
    module = DigitsCNN(channels, state["fc1.weight"].shape[0], state["fc2.weight"].shape[0])
    module.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return module.eval()


def _torch_predict(module, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(pixels)).numpy()
