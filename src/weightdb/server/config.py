"""The knobs of a running server, gathered so the CLI, the app and the batcher agree on them."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    max_batch: int = 32
    """Rows one batch may hold; a single larger request still runs, alone."""
    max_wait_ms: float = 2.0
    """How long the oldest queued request may wait for companions before its round starts."""
    max_queue: int = 256
    """Requests waiting to run; one more is answered 429."""
    timeout_s: float = 30.0
    """From arrival to answer; a request still queued or running then is answered 504."""
    max_body: int = 64 << 20
    """Bytes of request body; a larger body is answered 413 before it is parsed."""
    header_timeout_s: float = 10.0
    """From a connection (or the end of its previous response) to a complete request head;
    then the connection is answered 408 and closed, so stalled clients hold no socket."""
    body_timeout_s: float = 30.0
    """From a complete request head to the last byte of its body; then 408."""
    max_header_bytes: int = 64 << 10
    """Bytes of request line and headers; a larger head is answered 431."""
    max_connections: int = 2048
    """Open connections; one more is answered 503 with ``Retry-After`` and closed."""
    token: str | None = None
    """When set, every route except the health probes needs ``Authorization: Bearer <token>``."""
