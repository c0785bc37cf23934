"""`weightdb demo`: the first tour, on an embedded database in a folder.

Two digit classifiers are trained in seconds on scikit-learn's bundled digits: a base, and a
fine-tune whose first layer is frozen (bit-identical to the base's) and whose head was
retrained. Both go in through ``from_torch`` (ONNX graph plus weights); exact deduplication
stores the frozen layer once; a DuckDB table of digits is then scored by both models in SQL.
"""

import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from weightdb.database import Database, connect
from weightdb.units import format_size

HIDDEN = 512


def train_models(seed: int = 0):
    """The base and the fine-tune (first layer frozen), and the digits test split."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1400], order[1400:]

    def fit(model, params, epochs):
        optimizer = torch.optim.Adam(params, lr=3e-3)
        for _ in range(epochs):
            for batch in train.split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
        return model.eval()

    base = torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10)
    )
    fit(base, base.parameters(), epochs=8)
    tuned = torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10)
    )
    tuned.load_state_dict(base.state_dict())
    tuned[0].requires_grad_(False)
    fit(tuned, tuned[2].parameters(), epochs=4)
    return {"digits_base": base, "digits_finetune": tuned}, x[test].numpy(), y[test].numpy()


def _import(db: Database, models: dict, console: Console) -> None:
    import torch

    table = Table("model", "tensors", "model bytes", "new bytes stored", "stored in total")
    for name, module in models.items():
        before = db.stats()["stored_bytes"]
        info = db.from_torch(
            module,
            (torch.zeros(1, 64),),
            name=name,
            input_names=["pixels"],
            output_names=["logits"],
        )
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
        f"{stats['models']} models, {format_size(stats['logical_bytes'])} of weights stored in "
        f"{format_size(stats['stored_bytes'])} ({stats['distinct_blocks']} distinct blocks on "
        f"{stats['pages']} pages): the frozen layer is stored once"
    )


def _score_in_sql(db: Database, pixels: np.ndarray, labels: np.ndarray, console: Console) -> None:
    import pyarrow as pa

    features = pa.table(
        {
            "id": np.arange(len(labels)),
            "pixels": pa.array(list(pixels.astype(np.float32))),
            "label": labels,
        }
    )
    db.load_table("digits", features)
    query = """
        SELECT m.name AS model,
               count(*) AS rows,
               round(avg((predict_label(m.name, d.pixels) = d.label)::INT), 4) AS accuracy
        FROM digits d CROSS JOIN weightdb.models m
        GROUP BY m.name ORDER BY m.name
    """
    console.print(f"[bold]SQL[/]: {' '.join(query.split())}")
    result = db.sql(query)
    table = Table(*result.column_names)
    for row in result.to_pylist():
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def run_demo(path: Path, console: Console) -> None:
    if path.exists():
        shutil.rmtree(path)
    console.rule("[bold]weightdb demo")
    console.print("training two digit classifiers (a base and a fine-tune with a frozen layer)")
    models, pixels, labels = train_models()
    with connect(path) as db:
        console.rule("[bold]1. import: shared weights are stored once")
        _import(db, models, console)
        console.rule("[bold]2. score a feature table in SQL with both models")
        _score_in_sql(db, pixels, labels, console)
    console.print(f"database left at {path}; try `weightdb --db {path} stats`")
