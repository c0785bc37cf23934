"""Reader leases: a read-only process keeps a consistent snapshot of the catalog, and writers
keep the pages that snapshot may read until it lets go.

A read-only ``Store`` holds one SQLite read transaction open: in WAL mode it sees the catalog as
of its start, whatever writers commit meanwhile. Pages a later commit retires are still in
that snapshot, so their files must outlive it. The reader records when its snapshot was taken
in ``reader_leases``, renewing the lease while it lives; a writer deletes a retired page only
when it was retired before every live lease's snapshot (and the grace period has passed). A
reader that dies stops renewing, and its lease expires.

Leases are written on a connection of their own: the snapshot's connection must not write.
"""

import os
import sqlite3
import time
import uuid
from pathlib import Path

LEASE_SECONDS = 300.0
"""How long a lease lasts unless renewed; readers renew it every third of that."""


class LeaseRows:
    """Lease methods of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection
    path: Path

    def begin_snapshot(self) -> float:
        """Start the read transaction that pins this connection's view; returns its time."""
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT COUNT(*) FROM meta").fetchall()  # the snapshot starts here
        return time.time()

    def end_snapshot(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def write_lease(self, reader_id: str, snapshot_at: float) -> None:
        """Take or renew a lease for a snapshot taken at ``snapshot_at``."""
        with _lease_connection(self.path) as conn:
            conn.execute(
                "INSERT INTO reader_leases(reader_id, pid, snapshot_at, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(reader_id) DO UPDATE SET "
                "snapshot_at = excluded.snapshot_at, expires_at = excluded.expires_at",
                (reader_id, os.getpid(), snapshot_at, time.time() + LEASE_SECONDS),
            )

    def drop_lease(self, reader_id: str) -> None:
        with _lease_connection(self.path) as conn:
            conn.execute("DELETE FROM reader_leases WHERE reader_id = ?", (reader_id,))

    def oldest_snapshot(self) -> float | None:
        """When the oldest live reader's snapshot was taken (None: no live reader)."""
        return self.conn.execute(
            "SELECT MIN(snapshot_at) FROM reader_leases WHERE expires_at > ?", (time.time(),)
        ).fetchone()[0]


def new_reader_id() -> str:
    return uuid.uuid4().hex


class _lease_connection:
    """A short-lived connection that commits one lease change."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, timeout=60, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, kind, *exc: object) -> None:
        try:
            self._conn.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self._conn.close()
