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

Memory limits: in both scenarios each server runs in its own memory cgroup
(``weightdb.memory_limit``, when this process may create one) limited to the budget plus the
server's idle RSS, measured once it answers its health check and before any request, plus the
same serving allowance for both (``SERVING_ALLOWANCE``: a threaded server's connections and
malloc arenas are not model memory, and without it the baseline is killed before it serves):
page cache included, so neither server can hold more models than the budget gives it, and the
cgroup's peak is reported. The over-budget scenario also runs without a cgroup (labelled
unlimited) for reference.

Floors (on the cgroup runs): over budget, weightdb's throughput >= 2x the baseline's with a
lower p99; when everything fits, weightdb's p50 <= 1.3x the baseline's.
"""

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    rss,
    spread,
    summary,
    write_results,
)
from benchmarks.serving_baseline import IN, Classifier
from weightdb.memory_limit import MemoryLimit, drop_page_cache
from weightdb.memory_limit import available as cgroups_available
from weightdb.storage.policies import DEFAULT_POLICY

MODELS = 8
SKEW = 1.0
CONCURRENCY = 16
SUMMARIZED = ("requests", "throughput_rps", "p50_ms", "p99_ms")
SCENARIOS = {"over-budget": 20 << 20, "fits": 1 << 30}
UNLIMITED = ("over-budget",)  # scenarios also run without a memory cgroup, for reference
THROUGHPUT_FLOOR = 2.0  # weightdb / baseline requests per second, over budget
# Memory both servers get beyond budget + idle RSS for serving 16 connections: measured, the
# baseline's memory not backed by files grows by about 210 MiB from idle as its threads and
# their malloc arenas start (181 -> 390 MiB), which is not model memory.
SERVING_ALLOWANCE = 256 << 20
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


@dataclass
class Server:
    """A running server: its URL, its process and, when it runs under one, its memory cgroup."""

    url: str
    process: subprocess.Popen
    group: MemoryLimit | None
    idle_rss_bytes: int | None = None

    def cgroup(self) -> dict | None:
        """The cgroup's limit, the server's idle RSS, the most it held and its OOM kills."""
        if self.group is None:
            return None
        return {
            "limit_bytes": self.group.limit_bytes,
            "idle_rss_bytes": self.idle_rss_bytes,
            "peak_bytes": self.group.peak_bytes,
            "oom_kills": self.group.oom_kills,
        }


@contextmanager
def running(
    command: list[str], port: int, name: str, budget: int | None = None
) -> Iterator[Server]:
    """Start the server ``command`` and wait until it answers. With ``budget``, it runs in its own
    memory cgroup (joined as it starts), limited once it answers to ``budget`` plus its idle RSS."""
    group = MemoryLimit(name) if budget is not None else None
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, preexec_fn=group and group.join
    )
    server = Server(f"http://127.0.0.1:{port}", process, group)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{server.url}/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server {command} did not start") from None
                time.sleep(0.1)
        if group:
            server.idle_rss_bytes = rss(process.pid)
            group.limit(budget + server.idle_rss_bytes + SERVING_ALLOWANCE)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        if group:
            group.close()


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
            try:
                response = await http.post(
                    f"/v2/models/{model}/infer", content=bodies[k % len(bodies)], headers=headers
                )
            except httpx.TransportError:  # the server is gone (e.g. the OOM killer's doing)
                failures += 1
                continue
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
        "p50_ms": float(np.percentile(ms, 50)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if latencies else float("nan"),
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
        sys.executable, "-m", "weightdb", "--db", str(db_path), "serve",
        "--port", str(port), "--memory", str(budget), "--policy", DEFAULT_POLICY,
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
    db_path: Path,
    tensors: Path,
    budget: int,
    requests: int,
    repeats: int,
    time_limit: float,
    limited: bool,
) -> dict:
    """Both servers over the same traces, alternating which goes first; with ``limited``, each
    in a memory cgroup of ``budget`` plus its idle RSS."""
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
            limit = budget if limited else None
            with (
                cold_storage([db_path / "pages", tensors]),
                running(command, port, f"serving-{system}", limit) as server,
            ):
                asyncio.run(drive(server.url, warmup, bodies, time_limit))
                result = asyncio.run(drive(server.url, trace, bodies, time_limit))
                if system == "weightdb" and server.process.poll() is None:
                    result.update(pool_read_bytes(server.url))
                result["cgroup"] = server.cgroup()
            runs[system].append(result)
            print(f"  {system}: {result}", flush=True)
    return {system: summarize(results) for system, results in runs.items()}


def summarize(results: list[dict]) -> dict:
    summary_ = {key: summary([r[key] for r in results]) for key in SUMMARIZED}
    return {"runs": results, **summary_, "failures": sum(r["failures"] for r in results)}


def run(quick: bool, out_dir: Path) -> dict:
    requests, repeats, time_limit = (400, 1, 60.0) if quick else (2000, 3, 180.0)
    limited = cgroups_available()
    results: dict = {"quick": quick, "models": MODELS, "concurrency": CONCURRENCY}
    results["cgroups"] = limited
    with tempfile.TemporaryDirectory(prefix="weightdb-serving-") as tmp:
        db_path, tensors = build_family(Path(tmp))
        with weightdb.connect(db_path, create=False) as db:
            stats = db.stats()
        results["model_bytes"] = stats["logical_bytes"] // MODELS
        results["stored_bytes"] = stats["stored_bytes"]
        results["logical_bytes"] = stats["logical_bytes"]
        port_a, port_b = free_port(), free_port()
        with (
            running(weightdb_command(db_path, 1 << 30, port_a), port_a, "serving-weightdb") as a,
            running(baseline_command(tensors, 1 << 30, port_b), port_b, "serving-baseline") as b,
        ):
            results["max_abs_difference"] = check_agreement(a.url, b.url, request_bodies(1)[0])
        runs = [(scenario, budget, limited) for scenario, budget in SCENARIOS.items()]
        if limited:
            runs += [(f"{s}, unlimited", SCENARIOS[s], False) for s in UNLIMITED]
        results["scenarios"] = {}
        for scenario, budget, cgroup in runs:
            limit = "memory cgroup of budget + idle RSS" if cgroup else "unlimited"
            print(f"scenario {scenario} (budget {budget >> 20} MiB, {limit})", flush=True)
            outcome = run_scenario(db_path, tensors, budget, requests, repeats, time_limit, cgroup)
            outcome["budget_bytes"] = budget
            outcome["limit"] = "cgroup" if cgroup else "unlimited"
            results["scenarios"][scenario] = outcome
    results["floors"] = floors(results["scenarios"])
    write_results(out_dir, "serving", results, markdown(results))
    return results


def floors(scenarios: dict) -> dict:
    """The issue-8 floors; a ratio is None where the baseline served no request (e.g. ended by
    the OOM killer), and a floor is then met when weightdb served every request."""
    over, fits = scenarios["over-budget"], scenarios["fits"]
    speedup = _ratio(over, "throughput_rps")
    p99_ratio = _ratio(over, "p99_ms")
    p50_ratio = _ratio(fits, "p50_ms")
    return {
        "over_budget_throughput_ratio": speedup,
        "over_budget_p99_ratio": p99_ratio,
        "fits_p50_ratio": p50_ratio,
        "throughput_floor_met": (
            speedup >= THROUGHPUT_FLOOR and p99_ratio < 1
            if speedup is not None
            else over["weightdb"]["failures"] == 0
        ),
        "p50_floor_met": (
            p50_ratio <= P50_CEILING if p50_ratio is not None else fits["weightdb"]["failures"] == 0
        ),
    }


def _ratio(outcome: dict, key: str) -> float | None:
    """weightdb's median ``key`` over the baseline's; None if the baseline served nothing."""
    if outcome["baseline"]["requests"]["median"] == 0:
        return None
    return outcome["weightdb"][key]["median"] / outcome["baseline"][key]["median"]


REPORT = """
## Serving (KServe v2 over loopback)

$models fine-tuned MLP classifiers of $model_mib MiB sharing two frozen layers ($logical_mib \
MiB logical, $stored_mib MiB stored by weightdb); Zipf(s=$skew) single-row requests from \
$concurrency closed-loop connections; storage kept cold for both systems. Baseline: FastAPI + \
PyTorch modules from safetensors, whole-model LRU under the same budget. $limits Medians over \
$runs run(s), (min-max)$quick.

$table

cgroup limit / peak: the cgroup's limit (budget plus the server's idle RSS; median over runs) \
and the most memory, RSS and page cache, it held (largest over runs); OOM kills: runs the \
kernel's OOM killer ended inside the cgroup (their remaining requests count as failures).

Over budget$floor_runs: $over_budget (floor: ${throughput_floor}x the baseline's throughput \
and a lower p99): $throughput_met. Everything fits: $fits (ceiling: ${p50_ceiling}x the \
baseline's p50): $p50_met. $read answers agree to $agreement.
"""
LIMITS = {
    True: "Runs marked cgroup: each server in its own memory cgroup of the budget plus its idle "
    "RSS (measured once it answers, before any request), page cache included; runs marked "
    "unlimited have the machine's memory, where the budget binds weightdb's pool and the "
    "baseline's LRU only.",
    False: "No memory cgroups in these runs: every run is unlimited, the budget binds "
    "weightdb's pool and the baseline's LRU only.",
}
HEADER = [
    "scenario", "budget", "limit", "system", "requests/s", "p50 ms", "p99 ms", "failures",
    "cgroup limit / peak MiB", "OOM kills",
]  # fmt: skip


def _cgroup_cells(runs: list[dict]) -> list[str]:
    """The limit and peak columns of a system's runs (``-`` for runs without a cgroup)."""
    groups = [r["cgroup"] for r in runs if r.get("cgroup")]
    if not groups:
        return ["-", "-"]
    limit = statistics.median(g["limit_bytes"] for g in groups) / 2**20
    peak = max(g["peak_bytes"] for g in groups) / 2**20
    return [f"{limit:.0f} / {peak:.0f}", str(sum(g["oom_kills"] > 0 for g in groups))]


def _compared(ratio: float | None, what: str) -> str:
    """A floor's measured ratio in words (the baseline may have served nothing)."""
    return "the baseline served no request" if ratio is None else f"{what} {ratio:.2f}x"


def markdown(results: dict) -> str:
    rows = []
    for scenario, outcome in results["scenarios"].items():
        for system in ("weightdb", "baseline"):
            r = outcome[system]
            served = all(run["requests"] for run in r["runs"])  # else latencies are NaN
            rows.append([
                scenario, f"{outcome['budget_bytes'] >> 20} MiB",
                outcome.get("limit", "unlimited"), system, spread(r["throughput_rps"], "{:.0f}"),
                spread(r["p50_ms"], "{:.1f}") if served else "-",
                spread(r["p99_ms"], "{:.1f}") if served else "-",
                r["failures"], *_cgroup_cells(r["runs"]),
            ])  # fmt: skip
    f = results["floors"]
    over_runs = results["scenarios"]["over-budget"]["weightdb"]["runs"]
    over = over_runs[0]
    read = (
        f"weightdb read {over['read_bytes'] / 2**20:.0f} MiB from storage over budget "
        f"({over['read_bytes_per_round'] / 2**20:.2f} MiB per round of "
        f"{over['models_per_round']:.1f} models);"
        if "read_bytes" in over
        else "weightdb's server ended before its reads were counted;"
    )
    cgroups = results.get("cgroups", False)
    return render(
        REPORT,
        models=results["models"],
        model_mib=results["model_bytes"] >> 20,
        logical_mib=results["logical_bytes"] >> 20,
        stored_mib=results["stored_bytes"] >> 20,
        skew=SKEW,
        concurrency=results["concurrency"],
        limits=LIMITS[cgroups],
        runs=len(over_runs),
        quick="; quick mode" if results["quick"] else "",
        table=markdown_table(HEADER, rows),
        floor_runs=" (memory cgroup runs)" if cgroups else "",
        over_budget=_compared(f["over_budget_throughput_ratio"], "weightdb's throughput")
        + (
            f", p99 {f['over_budget_p99_ratio']:.2f}x"
            if f["over_budget_p99_ratio"] is not None
            else ""
        ),
        throughput_floor=THROUGHPUT_FLOOR,
        throughput_met="met" if f["throughput_floor_met"] else "NOT met",
        fits=_compared(f["fits_p50_ratio"], "weightdb's p50"),
        p50_ceiling=P50_CEILING,
        p50_met="met" if f["p50_floor_met"] else "NOT met",
        read=read,
        agreement=f"{results['max_abs_difference']:.1e}",
    )
