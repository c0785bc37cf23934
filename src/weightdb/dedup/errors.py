"""Errors a user of deduplication can fix."""

from weightdb.errors import WeightDBError


class EvalSpecError(WeightDBError):
    """An evaluation spec is missing, malformed, or does not match the stored models."""


class DedupParameterError(WeightDBError):
    """A deduplication method or parameter that does not exist or is out of range."""
