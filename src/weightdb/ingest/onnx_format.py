"""ONNX files: initializers become stored tensors, the rest of the graph is kept as is.

Initializers of at most ``INLINE_MAX_BYTES`` (shape constants, scalars) stay inside the graph:
storing them as blocks would only add catalog rows. Their number is kept in the model's metadata
(``graph_constants``) so that listings count them with the stored tensors. The original
initializer order is kept there too, so that export rebuilds the same graph.

Weights in external data files are mapped, not loaded: a model over protobuf's 2 GiB limit
cannot be held as one message, and a large one should not be read into memory whole anyway. An
external file must lie inside the model's folder.
"""

from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from weightdb.errors import SourceFormatError, one_line
from weightdb.ingest import declared
from weightdb.ingest.source import ModelSource, TensorEntry
from weightdb.storage import dtypes

INLINE_MAX_BYTES = 256


def _load_initializer(tensor: onnx.TensorProto, dtype: dtypes.DType, shape: tuple, path: Path):
    where = f"{path}: initializer {tensor.name!r}"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return _external_loader(tensor, dtype, shape, path.parent, where)

    if tensor.HasField("raw_data") and len(tensor.raw_data) != declared.nbytes(
        shape, dtype.itemsize
    ):
        raise SourceFormatError(
            f"{where} of {dtype.name}{list(shape)} holds "
            f"{len(tensor.raw_data)} bytes of data; the ONNX file is damaged"
        )

    def load() -> np.ndarray:
        if tensor.HasField("raw_data"):
            return np.frombuffer(tensor.raw_data, dtype=dtype.numpy).reshape(shape)
        try:
            array = numpy_helper.to_array(tensor)
        except ValueError as error:
            raise SourceFormatError(
                f"{where} does not hold {dtype.name}{list(shape)} ({one_line(error)}); "
                "the ONNX file is damaged"
            ) from None
        return array.astype(dtype.numpy, copy=False).reshape(shape)

    return load


def _external_number(info: dict[str, str], key: str, default: int, where: str) -> int:
    """An offset or length of external data: ONNX stores them as decimal strings."""
    text = info.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= declared.MAX_NUMBER_DIGITS):
        raise SourceFormatError(
            f"{where} has external data {key} {text[:30]!r}, not a byte count; the ONNX file "
            "is malformed"
        )
    return declared.whole_number(int(text), f"{where} external data {key}")


def _external_loader(
    tensor: onnx.TensorProto, dtype: dtypes.DType, shape: tuple, folder: Path, where: str
):
    info = {entry.key: entry.value for entry in tensor.external_data}
    file = (folder / info.get("location", "")).resolve()
    if folder.resolve() not in file.parents:
        raise SourceFormatError(
            f"{where} points at external data {info.get('location')!r} outside the model's "
            f"folder {folder}; weightdb only reads weights stored beside the model"
        )
    offset = _external_number(info, "offset", 0, where)
    nbytes = declared.nbytes(shape, dtype.itemsize)
    available = file.stat().st_size - offset if file.is_file() else -1
    if _external_number(info, "length", nbytes, where) != nbytes or available < nbytes:
        raise SourceFormatError(
            f"{where} needs {nbytes} bytes at offset {offset} of {file.name}, which holds "
            f"{max(available, 0)} there; the external data file is truncated or mismatched"
        )

    def load() -> np.ndarray:
        if nbytes == 0:
            return np.empty(shape, dtype.numpy)
        return np.memmap(file, dtype.numpy, "r", offset, shape)

    return load


def read_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, leaving external data in its files."""
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as error:
        raise SourceFormatError(f"{path} is not a valid ONNX model: {one_line(error)}") from None
    except RuntimeError as error:  # onnx reports damaged protobufs this way in some versions
        raise SourceFormatError(f"{path} is not a valid ONNX model: {one_line(error)}") from None
    if model.graph.sparse_initializer:
        raise SourceFormatError(
            f"{path} has sparse initializers, which weightdb does not import; densify them first"
        )
    return model


def open_onnx(path: Path) -> ModelSource:
    model = read_onnx(path)
    tensors = []
    order = [tensor.name for tensor in model.graph.initializer]
    kept = []
    for tensor in model.graph.initializer:
        dtype = dtypes.from_onnx(tensor.data_type)
        shape = declared.tensor_shape(
            list(tensor.dims), dtype.itemsize, f"{path}: initializer {tensor.name!r}"
        )
        load = _load_initializer(tensor, dtype, shape, path)
        entry = TensorEntry(tensor.name, dtype, shape, load)
        if entry.nbytes <= INLINE_MAX_BYTES:
            kept.append(
                numpy_helper.from_array(np.array(load()), tensor.name)
                if tensor.data_location == onnx.TensorProto.EXTERNAL
                else tensor
            )
        else:
            tensors.append(entry)
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    return ModelSource(
        format="onnx",
        tensors=tensors,
        graph=graph.SerializeToString(),
        metadata={"initializer_order": order, "graph_constants": len(kept)},
    )


def assemble_onnx(graph: bytes, metadata: dict, stored: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The full ONNX model: the stored graph with every initializer back in its place."""
    model = onnx.ModelProto()
    model.ParseFromString(graph)
    inline = {tensor.name: tensor for tensor in model.graph.initializer}
    initializers = []
    for name in metadata["initializer_order"]:
        if name in inline:
            initializers.append(inline[name])
        else:
            initializers.append(numpy_helper.from_array(stored[name], name))
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    return model


def save_onnx(model: onnx.ModelProto, path: Path, data_name: str) -> None:
    """Save, moving weights to ``data_name`` beside it when protobuf's 2 GiB limit needs it."""
    large = sum(len(t.raw_data) for t in model.graph.initializer) > 1536 * 1024 * 1024
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=data_name,
    )
