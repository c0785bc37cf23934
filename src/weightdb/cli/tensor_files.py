"""Prediction inputs and outputs as files: ``.npz`` (one array per graph input or output),
``.npy`` (a single array) and ``.parquet`` (one column per input; list columns hold rows)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weightdb.engine import InputSpec
from weightdb.errors import WeightDBError


def read_inputs(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise WeightDBError(f"input file {path} does not exist")
    names = [spec.name for spec in specs]
    if suffix == ".npy":
        if len(specs) != 1:
            raise WeightDBError(
                f"{path} holds one array but the model has inputs {names}; use .npz or .parquet"
            )
        return {names[0]: np.load(path, allow_pickle=False)}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix == ".parquet":
        table = pq.read_table(path)
        missing = [name for name in names if name not in table.column_names]
        if missing:
            raise WeightDBError(
                f"{path} has columns {table.column_names}; the model needs columns {missing}"
            )
        return {spec.name: _column_array(table[spec.name], spec, path) for spec in specs}
    raise WeightDBError(f"cannot read inputs from {path}: use a .npz, .npy or .parquet file")


def _column_array(column: pa.ChunkedArray, spec: InputSpec, path: Path) -> np.ndarray:
    """A parquet column as the input array: rows stacked, each reshaped to the per-row dims.
    The values keep their dtype: the engine converts them only where nothing is lost."""
    if column.null_count:
        raise WeightDBError(f"{path}: column {spec.name!r} has NULL rows")
    array = column.combine_chunks()
    rows = len(array)
    nested = _is_list(array.type)
    while _is_list(array.type):
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False)
    if not nested:
        return values
    per_row = [d if isinstance(d, int) else -1 for d in spec.dims[1:]]
    try:
        return values.reshape(rows, *per_row)
    except ValueError:
        raise WeightDBError(
            f"{path}: column {spec.name!r} holds {values.size // max(rows, 1)} values per row;"
            f" the model expects dims {list(spec.dims[1:])}"
        ) from None


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)


def write_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez(path, **outputs)
    elif suffix == ".npy":
        np.save(path, next(iter(outputs.values())))
    elif suffix == ".parquet":
        columns = {}
        for name, array in outputs.items():
            flat = array.reshape(len(array), -1)
            columns[name] = pa.FixedSizeListArray.from_arrays(
                pa.array(flat.reshape(-1)), flat.shape[1]
            )
        pq.write_table(pa.table(columns), path)
    else:
        raise WeightDBError(f"cannot write outputs to {path}: use .npz, .npy or .parquet")
