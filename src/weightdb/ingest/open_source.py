"""Pick the reader for an import source by what it is: folder, or file suffix; and its graph:
one given as an ONNX file, or one built for a Hugging Face encoder folder."""

from pathlib import Path

from weightdb.errors import SourceFormatError
from weightdb.ingest.graph_attach import attach_graph
from weightdb.ingest.hf_directory import open_hf_directory
from weightdb.ingest.hf_encoder import with_encoder_graph
from weightdb.ingest.npz_format import open_npz
from weightdb.ingest.onnx_format import open_onnx
from weightdb.ingest.safetensors_format import open_safetensors
from weightdb.ingest.source import ModelSource
from weightdb.ingest.torch_format import open_torch

READERS = {
    ".safetensors": open_safetensors,
    ".npz": open_npz,
    ".onnx": open_onnx,
    ".pt": open_torch,
    ".pth": open_torch,
    ".bin": open_torch,
}


def open_source(path: Path, graph: Path | None = None) -> ModelSource:
    """The tensors of ``path`` with the graph of the ONNX file ``graph`` when given (names,
    shapes and dtypes checked against each other)."""
    if graph is None:
        if path.is_dir():
            return with_encoder_graph(open_hf_directory(path))
        return _open_weights(path)
    if graph.suffix.lower() != ".onnx" or not graph.is_file():
        raise SourceFormatError(
            f"graph {graph} is not an existing .onnx file; give the model's ONNX file"
        )
    source = open_hf_directory(path) if path.is_dir() else _open_weights(path)
    if source.graph is not None:
        source.resources.close()
        raise SourceFormatError(f"{path} already holds a graph; import it without a graph file")
    return attach_graph(source, graph)


def _open_weights(path: Path) -> ModelSource:
    if not path.exists():
        raise SourceFormatError(f"import source {path} does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SourceFormatError(
            f"cannot import {path}: unknown file type {path.suffix!r}; weightdb imports "
            f"{', '.join(READERS)} files and Hugging Face model folders"
        )
    return reader(path)
