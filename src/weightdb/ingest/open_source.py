"""Pick the reader for an import source by what it is: folder, or file suffix."""

from pathlib import Path

from weightdb.errors import SourceFormatError
from weightdb.ingest.hf_directory import open_hf_directory
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


def open_source(path: Path) -> ModelSource:
    if path.is_dir():
        return open_hf_directory(path)
    if not path.exists():
        raise SourceFormatError(f"import source {path} does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SourceFormatError(
            f"cannot import {path}: unknown file type {path.suffix!r}; weightdb imports "
            f"{', '.join(READERS)} files and Hugging Face model folders"
        )
    return reader(path)
