"""Connection guards below the ASGI app, so that slow or greedy clients cannot starve the rest.

uvicorn's h11 protocol waits for a request head as long as the client takes, and its
``limit_concurrency`` counts idle connections too, so 300 stalled sockets would either exhaust
file descriptors or turn every valid request away. ``guarded_protocol`` closes a connection
whose request head is not complete within the header timeout (counted from the connection or
from the end of the previous response), answers 431 to a head larger than the header limit,
and answers 503 with ``Retry-After`` to connections beyond the cap, without reading them. The
body timeout is the ASGI app's (``limits.BodyGuard``): the app owns the response by then.
"""

import asyncio
import json
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from weightdb.server.config import ServerConfig
from weightdb.units import format_size


class _Connection(h11.Connection):
    """An h11 connection that remembers the status h11 suggests for a malformed request."""

    status_hint = 400

    def next_event(self):  # type: ignore[override]
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.status_hint = error.error_status_hint
            raise


def guarded_protocol(config: ServerConfig) -> type[asyncio.Protocol]:
    """The uvicorn HTTP protocol class enforcing ``config``'s connection limits."""

    class GuardedProtocol(_GuardedProtocol):
        header_timeout_s = config.header_timeout_s
        max_connections = config.max_connections
        max_header_bytes = config.max_header_bytes

    return GuardedProtocol


class _GuardedProtocol(H11Protocol):
    header_timeout_s: float
    max_connections: int
    max_header_bytes: int

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _Connection(h11.SERVER, self.max_header_bytes)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._rejected = False  # refused at connection_made: uvicorn never saw it
        self._refused = False  # answered by this guard: what the client still sends is dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._rejected = True
            message = (
                f"the server has {self.max_connections} connections open, its limit "
                "(--max-connections); retry later"
            )
            self._refuse(transport, 503, message, {"Retry-After": "1"})
            return
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if not self._rejected:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived
            self._stop_waiting()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head()  # before a pipelined head, if any, is read and stops it
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        if self.conn.status_hint != 431:
            super().send_400_response(msg)
            return
        limit = format_size(self.max_header_bytes)
        message = f"request head exceeds {limit} (the server's --max-header-size)"
        self._refuse(self.transport, 431, message)

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            message = (
                f"no complete request head within {self.header_timeout_s:g} s "
                "(the server's --header-timeout)"
            )
            self._refuse(self.transport, 408, message)

    def _refuse(
        self,
        transport: asyncio.Transport,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer, end our side, and drop what the client still sends for a moment before
        closing: closing with unread data would reset the connection, and the client could
        lose the answer before reading it."""
        self._refused = True
        self._stop_waiting()
        transport.write(_response(status, message, headers))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER_S, transport.close)


def _response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response closing the connection, with a KServe error body."""
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json"]
    head += [f"content-length: {len(body)}", "connection: close"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_LINGER_S = 1.0
