"""Errors of the inference engine that a user can fix: a model it cannot run, inputs it rejects."""

from weightdb.errors import WeightDBError


class UnsupportedModelError(WeightDBError):
    """The graph uses ops (or op versions) the engine does not implement, or is malformed."""


class InvalidInputError(WeightDBError):
    """Inputs to a prediction do not match the graph's inputs (name, dtype or shape)."""


class ExecutionError(WeightDBError):
    """An op failed on the given inputs, e.g. a token id outside the embedding's vocabulary."""
