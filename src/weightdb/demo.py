"""`weightdb demo`: the first tour. Two models that share weights go in; we show what was kept.

The second model is a "fine-tune" of the first: its embedding and first layer are frozen
(bit-identical), its head retrained. Exact deduplication stores the frozen part once.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from weightdb.database import connect
from weightdb.ingest.safetensors_format import write_safetensors
from weightdb.storage import dtypes
from weightdb.units import format_size


def demo_models(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = {
        "embedding.weight": rng.standard_normal((8000, 256), dtype=np.float32),
        "fc1.weight": rng.standard_normal((512, 256), dtype=np.float32) * 0.05,
        "fc1.bias": np.zeros(512, np.float32),
        "head.weight": rng.standard_normal((10, 512), dtype=np.float32) * 0.05,
        "head.bias": np.zeros(10, np.float32),
    }
    finetune = dict(base)
    finetune["head.weight"] = base["head.weight"] + rng.normal(0, 1e-3, (10, 512)).astype(
        np.float32
    )
    finetune["head.bias"] = rng.normal(0, 1e-3, 10).astype(np.float32)
    return {"classifier_base": base, "classifier_finetune": finetune}


def save_model(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as out:
        write_safetensors(
            out,
            [(n, dtypes.from_numpy(a.dtype), a.shape) for n, a in arrays.items()],
            iter(arrays.items()),
        )


def run_demo(path: Path, console: Console) -> None:
    if path.exists():
        shutil.rmtree(path)
    with tempfile.TemporaryDirectory() as tmp, connect(path) as db:
        console.rule("[bold]weightdb demo: two models that share weights")
        table = Table("model", "tensors", "model bytes", "new bytes stored", "stored in total")
        for name, arrays in demo_models().items():
            file = Path(tmp) / f"{name}.safetensors"
            save_model(file, arrays)
            before = db.stats()["stored_bytes"]
            info = db.import_model(file, name)
            after = db.stats()["stored_bytes"]
            table.add_row(
                name,
                str(info.tensors),
                format_size(info.logical_bytes),
                format_size(after - before),
                format_size(after),
            )
        console.print(table)
        stats = db.stats()
        console.print(
            f"{stats['models']} models, {format_size(stats['logical_bytes'])} of tensors stored "
            f"in {format_size(stats['stored_bytes'])} ({stats['distinct_blocks']} distinct "
            f"blocks on {stats['pages']} pages): {stats['dedup_ratio']:.2f}x less than one "
            "file per model"
        )
        out = Path(tmp) / "roundtrip.safetensors"
        db.export_model("classifier_finetune", out)
        original = Path(tmp) / "classifier_finetune.safetensors"
        same = out.read_bytes() == original.read_bytes()
        console.print(f"export of classifier_finetune is byte-identical to its source file: {same}")
    console.print(f"database left at {path}; try `weightdb --db {path} stats`")
