"""Every error weightdb raises on purpose derives from WeightDBError.

The CLI turns these into one line on stderr and a non-zero exit; anything else is a bug.
Each message says what is wrong and, where there is one, what to do about it.
"""


def one_line(cause: object) -> str:
    """A library's message (often several lines, e.g. ONNX's checker) as one line."""
    return " ".join(str(cause).split())


class WeightDBError(Exception):
    """Base class of all errors a user can cause and fix."""


class DatabaseNotFoundError(WeightDBError):
    """The path holds no weightdb database."""


class FormatVersionError(WeightDBError):
    """The database was written by a newer (or incompatible) weightdb."""


class InvalidNameError(WeightDBError):
    """A model name that could not be stored safely."""


class ModelExistsError(WeightDBError):
    """A model with this name is already stored."""


class ModelNotFoundError(WeightDBError):
    """No model with this name is stored."""


class SourceFormatError(WeightDBError):
    """An import source is malformed, truncated or of an unsupported kind."""


class UnsupportedDTypeError(WeightDBError):
    """A tensor uses a dtype weightdb does not store."""


class CorruptPageError(WeightDBError):
    """A page failed its checksum or header check on read."""


class BudgetExceededError(WeightDBError):
    """The buffer pool budget is smaller than what one request must hold at once."""


class ConcurrentWriteError(WeightDBError):
    """Another process is writing to the database."""


class StorageFullError(WeightDBError):
    """The disk ran out of space during a write; nothing was committed."""


class CatalogCorruptError(WeightDBError):
    """catalog.sqlite is damaged, or its rows no longer match their digests."""


class ReadOnlyError(WeightDBError):
    """A write was asked of a database opened read-only."""
