"""HTTP errors of the server and the status each weightdb error maps to.

Every error body is ``{"error": "<what is wrong>"}`` as in KServe v2.
"""

from starlette.exceptions import HTTPException

from weightdb.engine import ExecutionError, InvalidInputError, UnsupportedModelError
from weightdb.errors import (
    BudgetExceededError,
    InvalidNameError,
    ModelNotFoundError,
    WeightDBError,
)


class ApiError(HTTPException):
    """An answer other than 200: a status code, a message for the client, optional headers.

    An HTTPException, so FastAPI passes it through unchanged even when raised while it reads
    the body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)


class QueueFullError(ApiError):
    def __init__(self, capacity: int):
        super().__init__(
            429,
            f"the server has {capacity} requests waiting, its limit; retry later",
            {"Retry-After": "1"},
        )


class ShuttingDownError(ApiError):
    def __init__(self):
        super().__init__(503, "the server is shutting down and accepts no new requests")


_STATUS = (
    (ModelNotFoundError, 404),
    (InvalidNameError, 400),
    (InvalidInputError, 400),
    (ExecutionError, 400),
    (UnsupportedModelError, 400),
    (BudgetExceededError, 503),
)


def status_of(error: WeightDBError) -> int:
    """The HTTP status of a weightdb error raised while serving: 4xx for the client's mistakes
    (400 also for e.g. a model stored without a graph), 503 when the buffer pool cannot hold
    the request."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 400
