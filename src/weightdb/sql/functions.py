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

from weightdb.engine import InputSpec
from weightdb.sql.feature_rows import (
    SQLFunctionError,
    as_input,
    lists,
    model_groups,
    row_matrix,
    single_input,
)

if TYPE_CHECKING:
    from weightdb.database import Database


def _first_output(db: "Database", model: str, inputs: dict) -> np.ndarray:
    outputs = db.predict(model, inputs)
    return next(iter(outputs.values()))


def _per_row(function: str, compute: Callable, pad: bool) -> Callable:
    """A DuckDB arrow function computing ``compute(model, matrix, lengths)`` per model group."""

    def udf(models: pa.ChunkedArray, features: pa.ChunkedArray) -> pa.Array:
        feature_lists = lists(features, function, "features")
        results: list = [None] * len(feature_lists)
        for model, rows in model_groups(models, function).items():
            values = compute(model, *row_matrix(feature_lists, rows, function, pad))
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
        spec = single_input(db, model, "predict")
        output = _first_output(db, model, {spec.name: as_input(matrix, spec, model, "predict")})
        return list(output.reshape(len(matrix), -1))

    def predict_label(model: str, matrix: np.ndarray, _lengths: np.ndarray) -> list:
        spec = single_input(db, model, "predict_label")
        inputs = {spec.name: as_input(matrix, spec, model, "predict_label")}
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
