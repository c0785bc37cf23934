"""Errors of the model zoo that a user can fix."""

from weightdb.errors import WeightDBError


class ZooError(WeightDBError):
    """A zoo build was asked for something it cannot do (unknown family, bad size, ...)."""


class DataSourceMissingError(ZooError):
    """An optional data source is not installed; the message names the command that installs it."""
