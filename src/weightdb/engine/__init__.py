"""Inference engine: a numpy ONNX executor whose weight operands stream through the buffer pool."""

from weightdb.engine.errors import ExecutionError, InvalidInputError, UnsupportedModelError
from weightdb.engine.executor import InputSpec, PreparedModel, prepare, unsupported_ops
from weightdb.engine.weights import InMemoryWeight, StoredWeight, materialize

__all__ = [
    "ExecutionError",
    "InMemoryWeight",
    "InputSpec",
    "InvalidInputError",
    "PreparedModel",
    "StoredWeight",
    "UnsupportedModelError",
    "materialize",
    "prepare",
    "unsupported_ops",
]
