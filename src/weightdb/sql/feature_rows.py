"""Feature columns as model inputs: what ``predict`` in SQL and ``predict-table`` share.

Each helper takes the name of the calling function for its error messages."""

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


def lists(column: pa.ChunkedArray | pa.Array, function: str, what: str) -> pa.ListArray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        row = array.is_null().to_pylist().index(True)
        raise SQLFunctionError(
            f"{function}(): {what} is NULL in row {row} of this batch; filter NULL rows out "
            f"(WHERE {what} IS NOT NULL)"
        )
    return array


def model_groups(models: pa.ChunkedArray, function: str) -> dict[str, np.ndarray]:
    names = lists(models, function, "the model name").to_numpy(zero_copy_only=False)
    return {str(name): np.flatnonzero(names == name) for name in np.unique(names)}


def row_matrix(
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


def single_input(db: "Database", model: str, function: str) -> InputSpec:
    inputs = db.inputs(model)
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs)
        raise SQLFunctionError(
            f"{function}(): model {model!r} has {len(inputs)} inputs ({names}); {function} "
            "takes one feature array per row, so use embed() for encoders or db.predict in Python"
        )
    return inputs[0]


def as_input(matrix: np.ndarray, spec: InputSpec, model: str, function: str) -> np.ndarray:
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
