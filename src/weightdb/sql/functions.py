"""Vectorized (Arrow) SQL functions that run stored models on feature columns.

    predict(model, features)        -> FLOAT[]  the model's first output for each row
    predict_label(model, features)  -> BIGINT   the arg-max of that output (classifiers)
    embed(model, token_ids)         -> FLOAT[]  a sentence embedding from an encoder: the
                                                attention-masked mean of its first output

DuckDB hands these functions a vector of rows at a time; rows are grouped by model name
(the model may be a column) and each group runs as one batch through the engine.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from weightdb.engine import InputSpec
from weightdb.errors import WeightDBError

if TYPE_CHECKING:
    from weightdb.database import Database


class SQLFunctionError(WeightDBError):
    """A SQL function was called with arguments it cannot use."""


def _lists(column: pa.ChunkedArray | pa.Array, function: str, what: str) -> pa.ListArray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        row = array.is_null().to_pylist().index(True)
        raise SQLFunctionError(
            f"{function}(): {what} is NULL in row {row} of this batch; filter NULL rows out "
            f"(WHERE {what} IS NOT NULL)"
        )
    return array


def _model_groups(models: pa.ChunkedArray, function: str) -> dict[str, np.ndarray]:
    names = _lists(models, function, "the model name").to_numpy(zero_copy_only=False)
    return {str(name): np.flatnonzero(names == name) for name in np.unique(names)}


def _row_matrix(
    features: pa.ListArray, rows: np.ndarray, function: str, pad: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The feature lists of ``rows`` as one (rows, length) float64 matrix, and their lengths.

    With ``pad``, shorter rows are padded with zeros (sequences); otherwise lengths must agree.
    """
    lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False)[rows]
    values = np.asarray(
        features.take(pa.array(rows)).flatten().to_numpy(zero_copy_only=False), dtype=np.float64
    )
    width = int(lengths.max()) if len(lengths) else 0
    if not pad:
        if len(set(lengths.tolist())) > 1:
            raise SQLFunctionError(
                f"{function}(): rows have features of different lengths ({lengths.min()} and "
                f"{width}); one call needs one length per model"
            )
        return values.reshape(len(rows), width), lengths
    matrix = np.zeros((len(rows), width))
    matrix[np.arange(width)[None, :] < lengths[:, None]] = values
    return matrix, lengths


def _single_input(db: "Database", model: str, function: str) -> InputSpec:
    inputs = db.inputs(model)
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs)
        raise SQLFunctionError(
            f"{function}(): model {model!r} has {len(inputs)} inputs ({names}); {function} "
            "takes one feature array per row, so use embed() for encoders or db.predict in Python"
        )
    return inputs[0]


def _as_input(matrix: np.ndarray, spec: InputSpec, model: str, function: str) -> np.ndarray:
    """Reshape rows of features to the graph input: (rows, *per-row dims), in its dtype."""
    per_row = list(spec.dims[1:])
    free = [k for k, d in enumerate(per_row) if not isinstance(d, int)]
    known = int(np.prod([d for d in per_row if isinstance(d, int)], dtype=np.int64))
    length = matrix.shape[1]
    if len(free) > 1 or (free and length % known) or (not free and length != known):
        raise SQLFunctionError(
            f"{function}(): model {model!r} expects features of shape {per_row} per row "
            f"({known} values), got {length}"
        )
    if free:
        per_row[free[0]] = length // known
    if np.issubdtype(spec.dtype, np.integer) and not np.array_equal(matrix, np.round(matrix)):
        raise SQLFunctionError(
            f"{function}(): model {model!r} takes integer input {spec.name!r}; features must "
            "be whole numbers"
        )
    return matrix.astype(spec.dtype).reshape(len(matrix), *per_row)


def _first_output(db: "Database", model: str, inputs: dict) -> np.ndarray:
    outputs = db.predict(model, inputs)
    return next(iter(outputs.values()))


def _per_row(function: str, compute: Callable, pad: bool) -> Callable:
    """A DuckDB arrow function computing ``compute(model, matrix, lengths)`` per model group."""

    def udf(models: pa.ChunkedArray, features: pa.ChunkedArray) -> pa.Array:
        lists = _lists(features, function, "features")
        results: list = [None] * len(lists)
        for model, rows in _model_groups(models, function).items():
            values = compute(model, *_row_matrix(lists, rows, function, pad))
            for row, value in zip(rows, values, strict=True):
                results[row] = value
        return _to_arrow(results)

    return udf


def _to_arrow(values: list) -> pa.Array:
    if values and isinstance(values[0], np.ndarray):
        flat = np.concatenate([v.reshape(-1) for v in values]).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum([v.size for v in values])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.array(values, type=pa.int64())


def register(con, db: "Database") -> None:
    """Register weightdb's functions on a DuckDB connection."""

    def predict(model: str, matrix: np.ndarray, _lengths: np.ndarray) -> list:
        spec = _single_input(db, model, "predict")
        output = _first_output(db, model, {spec.name: _as_input(matrix, spec, model, "predict")})
        return list(output.reshape(len(matrix), -1))

    def predict_label(model: str, matrix: np.ndarray, _lengths: np.ndarray) -> list:
        spec = _single_input(db, model, "predict_label")
        inputs = {spec.name: _as_input(matrix, spec, model, "predict_label")}
        output = _first_output(db, model, inputs)
        return output.reshape(len(matrix), -1).argmax(axis=1).tolist()

    def embed(model: str, token_ids: np.ndarray, lengths: np.ndarray) -> list:
        mask = np.arange(token_ids.shape[1])[None, :] < lengths[:, None]
        hidden = _first_output(db, model, _encoder_inputs(db.inputs(model), token_ids, mask, model))
        if hidden.ndim == 2:
            return list(hidden)
        weights = mask[:, :, None].astype(hidden.dtype)
        return list((hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1))

    float_list, float64_list = "FLOAT[]", "DOUBLE[]"
    for name, compute, returns, pad in [
        ("predict", predict, float_list, False),
        ("predict_label", predict_label, "BIGINT", False),
        ("embed", embed, float_list, True),
    ]:
        con.create_function(
            name,
            _per_row(name, compute, pad),
            ["VARCHAR", float64_list],
            returns,
            type="arrow",
            null_handling="special",
            side_effects=False,
        )


def _encoder_inputs(
    specs: list[InputSpec], token_ids: np.ndarray, mask: np.ndarray, model: str
) -> dict:
    """BERT-style inputs from padded token ids: ids, the padding mask, zero token types."""
    by_name = {spec.name: spec for spec in specs}
    if "input_ids" not in by_name:
        raise SQLFunctionError(
            f"embed(): model {model!r} has no 'input_ids' input (it has {sorted(by_name)}); "
            "embed() is for BERT-style encoders"
        )
    ids = token_ids.astype(np.int64)
    inputs = {"input_ids": ids}
    if "attention_mask" in by_name:
        inputs["attention_mask"] = mask.astype(np.int64)
    if "token_type_ids" in by_name:
        inputs["token_type_ids"] = np.zeros_like(ids)
    unknown = set(by_name) - set(inputs)
    if unknown:
        raise SQLFunctionError(f"embed(): model {model!r} needs inputs {sorted(unknown)} too")
    return inputs
