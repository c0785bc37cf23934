"""Export: a stored model back to a file, bit-identical to what was imported.

Files are written under a temporary name, made durable, and renamed into place, so an
interrupted export (or a power loss) never leaves a partial file under the requested name.
"""

import json
import os
from pathlib import Path

import numpy as np

from weightdb.errors import WeightDBError
from weightdb.ingest.onnx_format import assemble_onnx, save_onnx
from weightdb.ingest.safetensors_format import write_safetensors
from weightdb.progress import Progress
from weightdb.storage import dtypes
from weightdb.storage.page_files import fsync_path
from weightdb.storage.store import Store

FORMATS = (".safetensors", ".onnx", ".npz")


def export_model(store: Store, name: str, path: Path, progress: Progress | None) -> Path:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise WeightDBError(
            f"cannot export to {path}: the file name must end in {', '.join(FORMATS)}"
        )
    tensors = store.tensors(name)
    graph, metadata = store.catalog.graph_and_metadata(store.catalog.model_id(name))
    metadata = json.loads(metadata)
    if suffix == ".onnx" and graph is None:
        raise WeightDBError(
            f"model {name!r} was imported without a graph, so it cannot be exported as ONNX; "
            "export it as .safetensors or .npz"
        )
    if not path.parent.is_dir():
        raise WeightDBError(f"cannot export to {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial")
    try:
        if suffix == ".safetensors":
            with tmp.open("wb") as out:
                write_safetensors(
                    out,
                    [(t.name, dtypes.from_numpy(t.dtype), t.shape) for t in tensors.values()],
                    _chunks(tensors, progress),
                    metadata.get("safetensors_metadata"),
                )
        elif suffix == ".npz":
            with tmp.open("wb") as out:
                np.savez(out, **_whole(tensors, progress))
        else:
            model = assemble_onnx(graph, metadata, _whole(tensors, progress))
            save_onnx(model, tmp, data_name=path.name + ".data")
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _chunks(tensors, progress):
    total = sum(t.nbytes for t in tensors.values())
    for tensor in tensors.values():
        for band in tensor.row_bands():
            if progress:
                progress(band.nbytes, total)
            yield tensor.name, band


def _whole(tensors, progress) -> dict[str, np.ndarray]:
    arrays = {}
    total = sum(t.nbytes for t in tensors.values())
    for tensor in tensors.values():
        arrays[tensor.name] = tensor.read()
        if progress:
            progress(tensor.nbytes, total)
    return arrays
