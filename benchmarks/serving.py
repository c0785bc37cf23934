"""Serving over HTTP: weightdb's KServe v2 server against a plain FastAPI server that holds
PyTorch modules, on loopback, under one memory budget.

The family: fine-tunes of one MLP classifier whose first two layers were frozen (shared, 5 MiB)
and whose last hidden layer and head were tuned per task (private, 4 MiB); 9 MiB per model.
The baseline keeps whole modules (loaded from safetensors) while they fit the budget and evicts
the least recently used; weightdb gives the same budget to its buffer pool. Clients send a
Zipf-distributed mix of single-row requests from a closed loop of concurrent connections.

Scenarios: ``over-budget`` (the models total 8 x 9 MiB against a 20 MiB budget: the baseline
holds two models, weightdb the shared layers and about three private ones) and ``fits`` (every
model fits both). Storage is cold for both systems: before each run every file of both is
dropped from the OS page cache, and during the run a thread drops them again every 50 ms, so a
model or page evicted from memory is read back from storage, not from the page cache.

Floors: over budget, weightdb's throughput >= 2x the baseline's with a lower p99; when
everything fits, weightdb's p50 <= 1.3x the baseline's.
"""

import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from safetensors.torch import save_file

import weightdb
from benchmarks.harness import (
    REPO,
    markdown_table,
    render,
    spread,
    summary,
    write_results,
)
from benchmarks.serving_baseline import IN, Classifier
from weightdb.memory_limit import drop_page_cache
from weightdb.storage.policies import DEFAULT_POLICY

MODELS = 8
SKEW = 1.0
CONCURRENCY = 16
SUMMARIZED = ("throughput_rps", "p50_ms", "p99_ms")
SCENARIOS = {"over-budget": 20 << 20, "fits": 1 << 30}
THROUGHPUT_FLOOR = 2.0  # weightdb / baseline requests per second, over budget
P50_CEILING = 1.3  # weightdb p50 / baseline p50, when everything fits


def build_family(folder: Path) -> tuple[Path, Path]:
    """The weightdb database and the folder of safetensors files, one model per task."""
    torch.manual_seed(0)
    base = Classifier().eval()
    db_path, tensors = folder / "db", folder / "safetensors"
    tensors.mkdir()
    with weightdb.connect(db_path) as db:
        for k in range(MODELS):
            model = Classifier().eval()
            model.load_state_dict(base.state_dict())
            with torch.no_grad():  # the tuned layers: the base plus a task's update
                for layer in (model.layers[4], model.layers[6]):
                    layer.weight.add_(0.02 * torch.randn_like(layer.weight))
                    layer.bias.add_(0.02 * torch.randn_like(layer.bias))
            name = f"task{k}"
            db.from_torch(
                model, (torch.randn(2, IN),), name=name, input_names=["x"], output_names=["y"]
            )
            save_file(model.state_dict(), tensors / f"{name}.safetensors")
    return db_path, tensors


@contextmanager
def running(command: list[str], port: int) -> Iterator[str]:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server {command} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cold_storage(paths: list[Path]) -> Iterator[None]:
    """Drop the files from the OS page cache now and every 50 ms until the block ends."""
    stop = threading.Event()

    def dropper() -> None:
        while not stop.wait(0.05):
            for path in paths:
                drop_page_cache(path)

    for path in paths:
        drop_page_cache(path)
    thread = threading.Thread(target=dropper, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def zipf_trace(requests: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, MODELS + 1) ** SKEW
    ranks = rng.choice(MODELS, size=requests, p=weights / weights.sum())
    popularity = rng.permutation(MODELS)  # which task is most popular is not task0
    return [f"task{popularity[r]}" for r in ranks]


async def drive(url: str, trace: list[str], bodies: list[bytes], time_limit: float) -> dict:
    """Closed loop: CONCURRENCY connections send the trace in order; per-request latency."""
    latencies: list[float] = []
    failures = 0
    cursor = iter(enumerate(trace))
    deadline = time.perf_counter() + time_limit
    headers = {"Content-Type": "application/json"}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        for k, model in cursor:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            response = await http.post(
                f"/v2/models/{model}/infer", content=bodies[k % len(bodies)], headers=headers
            )
            latencies.append(time.perf_counter() - start)
            failures += response.status_code != 200

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(CONCURRENCY)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": failures,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def request_bodies(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    bodies = []
    for _ in range(count):
        x = rng.standard_normal(IN).astype(np.float32)
        tensor = {"name": "x", "shape": [1, IN], "datatype": "FP32", "data": x.tolist()}
        bodies.append(httpx.Request("POST", "/", json={"inputs": [tensor]}).content)
    return bodies


def check_agreement(weightdb_url: str, baseline_url: str, body: bytes) -> float:
    """Largest absolute difference between the two servers' answers, over all models."""
    worst = 0.0
    headers = {"Content-Type": "application/json"}
    for k in range(MODELS):
        answers = [
            httpx.post(f"{url}/v2/models/task{k}/infer", content=body, headers=headers).json()
            for url in (weightdb_url, baseline_url)
        ]
        a, b = (np.asarray(r["outputs"][0]["data"]) for r in answers)
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def weightdb_command(db_path: Path, budget: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "weightdb.server", "--db", str(db_path), "serve",
        "--port", str(port), "--budget", str(budget), "--policy", DEFAULT_POLICY,
    ]  # fmt: skip


def baseline_command(folder: Path, budget: int, port: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.serving_baseline", str(folder), str(budget),
            str(port)]  # fmt: skip


def pool_read_bytes(url: str) -> dict:
    """weightdb's bytes read from storage, in total and per scheduling round."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("weightdb_pool_read_bytes_total", "weightdb_round_read_bytes_sum",
                    "weightdb_round_read_bytes_count", "weightdb_round_models_sum"):  # fmt: skip
            values[name] = float(value)
    rounds = values["weightdb_round_read_bytes_count"]
    return {
        "read_bytes": values["weightdb_pool_read_bytes_total"],
        "rounds": rounds,
        "read_bytes_per_round": values["weightdb_round_read_bytes_sum"] / rounds,
        "models_per_round": values["weightdb_round_models_sum"] / rounds,
    }


def run_scenario(
    db_path: Path, tensors: Path, budget: int, requests: int, repeats: int, time_limit: float
) -> dict:
    bodies = request_bodies(64)
    runs: dict[str, list[dict]] = {"weightdb": [], "baseline": []}
    for repeat in range(repeats):
        trace = zipf_trace(requests, seed=repeat)
        warmup = zipf_trace(max(requests // 10, MODELS * 4), seed=1000 + repeat)
        for system in ("weightdb", "baseline") if repeat % 2 == 0 else ("baseline", "weightdb"):
            port = free_port()
            command = (
                weightdb_command(db_path, budget, port)
                if system == "weightdb"
                else baseline_command(tensors, budget, port)
            )
            with cold_storage([db_path / "pages", tensors]), running(command, port) as url:
                asyncio.run(drive(url, warmup, bodies, time_limit))
                result = asyncio.run(drive(url, trace, bodies, time_limit))
                if system == "weightdb":
                    result.update(pool_read_bytes(url))
            runs[system].append(result)
            print(f"  {system}: {result}", flush=True)
    return {system: summarize(results) for system, results in runs.items()}


def summarize(results: list[dict]) -> dict:
    summary_ = {key: summary([r[key] for r in results]) for key in SUMMARIZED}
    return {"runs": results, **summary_, "failures": sum(r["failures"] for r in results)}


def run(quick: bool, out_dir: Path) -> dict:
    requests, repeats, time_limit = (400, 1, 60.0) if quick else (2000, 3, 180.0)
    results: dict = {"quick": quick, "models": MODELS, "concurrency": CONCURRENCY}
    with tempfile.TemporaryDirectory(prefix="weightdb-serving-") as tmp:
        db_path, tensors = build_family(Path(tmp))
        with weightdb.connect(db_path, create=False) as db:
            stats = db.stats()
        results["model_bytes"] = stats["logical_bytes"] // MODELS
        results["stored_bytes"] = stats["stored_bytes"]
        results["logical_bytes"] = stats["logical_bytes"]
        port_a, port_b = free_port(), free_port()
        with (
            running(weightdb_command(db_path, 1 << 30, port_a), port_a) as a,
            running(baseline_command(tensors, 1 << 30, port_b), port_b) as b,
        ):
            results["max_abs_difference"] = check_agreement(a, b, request_bodies(1)[0])
        results["scenarios"] = {}
        for scenario, budget in SCENARIOS.items():
            print(f"scenario {scenario} (budget {budget >> 20} MiB)", flush=True)
            outcome = run_scenario(db_path, tensors, budget, requests, repeats, time_limit)
            outcome["budget_bytes"] = budget
            results["scenarios"][scenario] = outcome
    results["floors"] = floors(results["scenarios"])
    write_results(out_dir, "serving", results, markdown(results))
    return results


def floors(scenarios: dict) -> dict:
    over, fits = scenarios["over-budget"], scenarios["fits"]
    speedup = (
        over["weightdb"]["throughput_rps"]["median"] / over["baseline"]["throughput_rps"]["median"]
    )
    p99_ratio = over["weightdb"]["p99_ms"]["median"] / over["baseline"]["p99_ms"]["median"]
    p50_ratio = fits["weightdb"]["p50_ms"]["median"] / fits["baseline"]["p50_ms"]["median"]
    return {
        "over_budget_throughput_ratio": speedup,
        "over_budget_p99_ratio": p99_ratio,
        "fits_p50_ratio": p50_ratio,
        "throughput_floor_met": speedup >= THROUGHPUT_FLOOR and p99_ratio < 1,
        "p50_floor_met": p50_ratio <= P50_CEILING,
    }


REPORT = """
## Serving (KServe v2 over loopback)

$models fine-tuned MLP classifiers of $model_mib MiB sharing two frozen layers ($logical_mib \
MiB logical, $stored_mib MiB stored by weightdb); Zipf(s=$skew) single-row requests from \
$concurrency closed-loop connections; storage kept cold for both systems. Baseline: FastAPI + \
PyTorch modules from safetensors, whole-model LRU under the same budget. Medians over $runs \
run(s), (min-max)$quick.

$table

Over budget: weightdb ${throughput_ratio}x the baseline's throughput (floor \
${throughput_floor}x), p99 ratio $p99_ratio (floor < 1): $throughput_met. Everything fits: \
p50 ratio $p50_ratio (ceiling $p50_ceiling): $p50_met. weightdb read $read_mib MiB from \
storage over budget ($round_mib MiB per round of $round_models models); answers agree to \
$agreement.
"""


def markdown(results: dict) -> str:
    rows = []
    for scenario, outcome in results["scenarios"].items():
        for system in ("weightdb", "baseline"):
            r = outcome[system]
            rows.append([
                scenario, f"{outcome['budget_bytes'] >> 20} MiB", system,
                spread(r["throughput_rps"], "{:.0f}"), spread(r["p50_ms"], "{:.1f}"),
                spread(r["p99_ms"], "{:.1f}"), r["failures"],
            ])  # fmt: skip
    f = results["floors"]
    over_runs = results["scenarios"]["over-budget"]["weightdb"]["runs"]
    over = over_runs[0]
    return render(
        REPORT,
        models=results["models"],
        model_mib=results["model_bytes"] >> 20,
        logical_mib=results["logical_bytes"] >> 20,
        stored_mib=results["stored_bytes"] >> 20,
        skew=SKEW,
        concurrency=results["concurrency"],
        runs=len(over_runs),
        quick="; quick mode" if results["quick"] else "",
        table=markdown_table(
            ["scenario", "budget", "system", "requests/s", "p50 ms", "p99 ms", "failures"], rows
        ),
        throughput_ratio=f"{f['over_budget_throughput_ratio']:.2f}",
        throughput_floor=THROUGHPUT_FLOOR,
        p99_ratio=f"{f['over_budget_p99_ratio']:.2f}",
        throughput_met="met" if f["throughput_floor_met"] else "NOT met",
        p50_ratio=f"{f['fits_p50_ratio']:.2f}",
        p50_ceiling=P50_CEILING,
        p50_met="met" if f["p50_floor_met"] else "NOT met",
        read_mib=f"{over['read_bytes'] / 2**20:.0f}",
        round_mib=f"{over['read_bytes_per_round'] / 2**20:.2f}",
        round_models=f"{over['models_per_round']:.1f}",
        agreement=f"{results['max_abs_difference']:.1e}",
    )
