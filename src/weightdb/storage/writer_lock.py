"""One writer at a time per database, across processes: an flock on ``writer.lock``.

Readers never take it. A writer holds it from before it writes its first page file until its
catalog transaction commits, so cleaning up orphaned page files under the lock can never
delete the files of a write in progress. The kernel drops the lock when a process dies.
"""

import fcntl
import os
import time
from pathlib import Path

from weightdb.errors import ConcurrentWriteError


class WriterLock:
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> "WriterLock":
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise ConcurrentWriteError(
                            f"another process has been writing to {self.path.parent} for "
                            f"{self.timeout:.0f}s; wait for it to finish and retry"
                        ) from None
                    time.sleep(0.05)
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
