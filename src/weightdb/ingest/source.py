"""What every importer produces: named tensors, loaded lazily, plus what export needs back."""

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightdb.errors import SourceFormatError
from weightdb.storage.dtypes import DType


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]  # little-endian array of ``shape``; may be memory-mapped

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class ModelSource:
    """An opened import source. Close it (or use ``with``) to release mapped files."""

    format: str
    tensors: list[TensorEntry]
    graph: bytes | None = None  # ONNX ModelProto without the tensors above
    metadata: dict[str, Any] = field(default_factory=dict)
    resources: ExitStack = field(default_factory=ExitStack)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for entry in self.tensors:
            if entry.name in seen:
                raise SourceFormatError(f"tensor name {entry.name!r} appears twice in the source")
            seen.add(entry.name)

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.resources.close()

    def drop_graph(self, reason: str) -> None:
        """Import the tensors weights only, keeping ``reason`` to say why they cannot predict."""
        for key in ("initializer_order", "graph_constants", "graph_built_by"):
            self.metadata.pop(key, None)
        self.graph = None
        self.metadata["no_graph_reason"] = reason

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors)
