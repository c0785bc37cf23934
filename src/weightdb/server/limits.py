"""Protection at the door: a request body size limit and read deadline, and an optional
bearer token."""

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightdb.server.errors import ApiError
from weightdb.units import format_size


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int):
        super().__init__(
            413, f"request body exceeds {format_size(limit)} (the server's --max-body)"
        )


class BodyTooSlowError(ApiError):
    def __init__(self, timeout_s: float):
        super().__init__(
            408,
            f"request body not complete within {timeout_s:g} s (the server's --body-timeout)",
            {"Connection": "close"},
        )


class BodyGuard:
    """ASGI middleware answering 413 to a body over ``max_bytes``: at once when Content-Length
    says so, else as soon as the streamed body passes the limit, before anything parses it; and
    408 to a body whose last byte has not arrived ``timeout_s`` after the request head."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            await _send_error(send, BodyTooLargeError(self._max_bytes))
            return
        received = 0
        deadline = time.monotonic() + self._timeout_s
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # e.g. waiting for the client to disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlowError(self._timeout_s) from None
            received += len(message.get("body", b""))
            if received > self._max_bytes:
                raise BodyTooLargeError(self._max_bytes)
            complete = not message.get("more_body", False)
            return message

        await self._app(scope, limited, send)


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps({"error": error.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def bearer_token(token: str) -> Callable[..., Awaitable[None]]:
    """A route dependency that answers 401 unless the request carries ``Bearer <token>``."""
    scheme = HTTPBearer(
        auto_error=False, description="The server's WEIGHTDB_TOKEN or --token-file."
    )
    expected = token.encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None:
            raise ApiError(
                401,
                "missing bearer token: send the header 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise ApiError(401, "wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return check
