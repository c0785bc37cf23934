"""One writer at a time per database, across processes: an flock on ``writer.lock``.

Readers never take it. A writer holds it from before it writes its first page file until its
catalog transaction commits, so cleaning up orphaned page files under the lock can never
delete the files of a write in progress. The kernel drops the lock when a process dies.

``filelock`` does the locking, configured to keep exactly that contract: a native flock only
(never its soft fallback, a marker file that outlives a crashed writer), the lock file left in
place, and one hold shared by the threads of a process, re-entered by nested writes.
"""

from pathlib import Path

from filelock import FileLock, Timeout

from weightdb.errors import ConcurrentWriteError


class WriterLock:
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = FileLock(
            path,
            timeout=timeout,
            mode=0o644,
            thread_local=False,
            fallback_to_soft=False,
            preserve_lock_file=True,
        )

    def __enter__(self) -> "WriterLock":
        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            raise ConcurrentWriteError(
                f"another process has been writing to {self.path.parent} for "
                f"{self.timeout:g}s; wait for it to finish and retry"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
