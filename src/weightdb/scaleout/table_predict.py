"""Predictions over a table: a feature column in, the input's columns plus ``prediction`` out.

The same batch function runs in the local process (``predict_table``, the CLI without
``--ray``) and inside every Ray actor (``weightdb.ray.predict``), so both give the same rows,
bit for bit: each model's first output as a list of float32, in input order. Rows are grouped
by model within a batch and every group is one ``db.predict`` call; the engine is
batch-invariant, so how rows are cut into batches never changes a result.
"""

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weightdb.database import DEFAULT_BUDGET, Database, connect
from weightdb.errors import WeightDBError
from weightdb.sql.feature_rows import as_input, lists, model_groups, row_matrix, single_input

PREDICTION = "prediction"
BATCH_ROWS = 4096


def open_reader(db_path: str | Path, budget: int | str | None = DEFAULT_BUDGET) -> Database:
    """Open an existing database for predictions, with its own buffer pool of ``budget``: the
    one place a worker opens it, read-only, on a snapshot writers keep readable."""
    return connect(db_path, read_only=True, budget=budget)


def check_model_choice(model: str | None, model_column: str | None) -> None:
    if (model is None) == (model_column is None):
        raise WeightDBError("give exactly one of a model name or a model column")


def predict_batch(
    db: Database,
    batch: pa.Table,
    features: str,
    model: str | None = None,
    model_column: str | None = None,
) -> pa.Table:
    """``batch`` with a ``prediction`` column appended (one ``db.predict`` per model)."""
    check_model_choice(model, model_column)
    for column in (features, model_column):
        if column is not None and column not in batch.column_names:
            raise WeightDBError(
                f"the table has no column {column!r}; its columns are {batch.column_names}"
            )
    if PREDICTION in batch.column_names:
        raise WeightDBError(f"the table already has a {PREDICTION!r} column; rename it first")
    rows = batch.num_rows
    feature_lists = lists(batch[features], "predict", features)
    groups = (
        {model: np.arange(rows)}
        if model is not None
        else model_groups(batch[model_column], "predict")
    )
    widths = np.zeros(rows, dtype=np.int64)
    outputs = []
    for name, members in groups.items():
        spec = single_input(db, name, "predict")
        matrix, _ = row_matrix(feature_lists, members, "predict", pad=False)
        result = db.predict(name, {spec.name: as_input(matrix, spec, name, "predict")})
        output = next(iter(result.values())).reshape(len(members), -1).astype(np.float32)
        widths[members] = output.shape[1]
        outputs.append((members, output))
    offsets = np.concatenate([[0], np.cumsum(widths)])
    flat = np.empty(offsets[-1], dtype=np.float32)
    for members, output in outputs:
        flat[offsets[members][:, None] + np.arange(output.shape[1])] = output
    prediction = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat))
    return batch.append_column(PREDICTION, prediction)


def predict_table(
    db_path: str | Path,
    table: pa.Table | str | Path,
    features: str,
    model: str | None = None,
    model_column: str | None = None,
    budget: int | str | None = DEFAULT_BUDGET,
    batch_rows: int = BATCH_ROWS,
) -> pa.Table:
    """Predict every row of ``table`` (an Arrow table or a Parquet file) in this process."""
    check_model_choice(model, model_column)
    if not isinstance(table, pa.Table):
        table = read_parquet(Path(table))
    with open_reader(db_path, budget) as db:
        parts = [
            predict_batch(db, table.slice(start, batch_rows), features, model, model_column)
            for start in range(0, table.num_rows, batch_rows)
        ]
    if not parts:
        return table.append_column(PREDICTION, pa.array([], pa.list_(pa.float32())))
    return pa.concat_tables(parts)


def read_parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise WeightDBError(f"input table {path} does not exist")
    return pq.read_table(path)


def model_pages(db: Database, models: Collection[str]) -> dict[str, set[int]]:
    """The page ids each model reads, from the catalog: what sharing groups are built from."""
    return {
        name: {
            int(page)
            for tensor in db.tensors(name).values()
            for page in np.unique(tensor.locations[..., 0])
        }
        for name in models
    }
