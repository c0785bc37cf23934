"""The serving suite's baseline: a plain FastAPI server holding PyTorch modules, whole models
kept LRU under a byte budget, loaded from safetensors on a miss (``benchmarks.serving`` starts
it as a child process, one per run).

    python -m benchmarks.serving_baseline FOLDER BUDGET PORT
"""

import argparse
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.harness import LRUModels
from weightdb.memory_limit import drop_page_cache

IN, HIDDEN, CLASSES = 256, 1024, 16


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(IN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def baseline_app(folder: Path, budget: int):
    """A plain FastAPI server: whole modules cached under ``budget`` bytes, LRU, loaded from
    safetensors on a miss (the evicted model's file is dropped from the OS page cache)."""
    from fastapi import Body, FastAPI

    app = FastAPI()

    def load(name: str) -> torch.nn.Module:
        model = Classifier().eval()
        model.load_state_dict(load_file(folder / f"{name}.safetensors"))
        return model

    cache = LRUModels(
        load,
        size_of=lambda name: tensor_bytes(folder / f"{name}.safetensors"),
        budget=budget,
        evicted=lambda name: drop_page_cache(folder / f"{name}.safetensors"),
    )
    lock = threading.Lock()

    def module(name: str) -> torch.nn.Module:
        with lock:
            return cache.get(name)

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict = Body(...)) -> dict:
        tensor = body["inputs"][0]
        x = torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])
        with torch.inference_mode():
            y = module(name)(x)
        output = {"name": "y", "datatype": "FP32", "shape": list(y.shape)}
        return {"model_name": name, "outputs": [{**output, "data": y.flatten().tolist()}]}

    return app


def tensor_bytes(path: Path) -> int:
    """Bytes of a safetensors file's tensors: the file less its length prefix and JSON header."""
    with path.open("rb") as file:
        header = int.from_bytes(file.read(8), "little")
    return path.stat().st_size - 8 - header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the family's safetensors files")
    parser.add_argument("budget", type=int, help="bytes of whole modules kept")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    import uvicorn

    app = baseline_app(args.folder, args.budget)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
