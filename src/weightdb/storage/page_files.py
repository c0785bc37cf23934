"""Page files: append-only segment files under ``pages/`` that hold pages back to back.

A writer only ever creates new segment files, so pages are immutable once written. Pages start
at 4 KiB aligned offsets. File names are generated here from segment numbers; no user string
ever becomes part of a path.
"""

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from weightdb.errors import CorruptPageError
from weightdb.storage.page_format import Page, parse_page

FILE_ALIGN = 4096
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".pages"


def segment_name(number: int) -> str:
    return f"{SEGMENT_PREFIX}{number:08d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    """The number of a segment file name, or None for files that are not segments."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


@dataclass(frozen=True)
class PageLocation:
    page_id: int
    file: str
    offset: int
    length: int
    checksum: int


class SegmentWriter:
    """Appends pages to new segment files, rolling over at ``segment_bytes``."""

    def __init__(self, directory: Path, first_segment: int, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._next_segment = first_segment
        self._fd: int | None = None
        self._name = ""
        self._offset = 0
        self.files: list[str] = []

    def append(
        self, page_id: int, pieces: list[memoryview | bytes], length: int, checksum: int
    ) -> PageLocation:
        """Write one page (given as pieces totalling ``length`` bytes) at the end."""
        if self._fd is None or self._offset + length > self.segment_bytes:
            self._roll()
        assert self._fd is not None
        offset = self._offset
        padding = -length % FILE_ALIGN
        buffers = [*pieces, bytes(padding)] if padding else list(pieces)
        written = os.writev(self._fd, buffers)
        if written != length + padding:
            # The disk filled up mid-page: writing the rest raises ENOSPC (callers turn it
            # into StorageFullError) or, if space came back, completes the page.
            rest = memoryview(b"".join(bytes(b) for b in buffers))[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]
        self._offset += length + padding
        return PageLocation(page_id, self._name, offset, length, checksum)

    def _roll(self) -> None:
        self._close_current()
        self._name = segment_name(self._next_segment)
        self._next_segment += 1
        # O_EXCL: never overwrite an existing file, even one a crashed writer left behind.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._fd = os.open(self.directory / self._name, flags, 0o644)
        self._offset = 0
        self.files.append(self._name)

    def _close_current(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def finish(self) -> None:
        """Make every written page durable (file data and directory entries)."""
        self._close_current()
        fsync_path(self.directory)

    def abort(self) -> None:
        """Close and delete what this writer created; used when an import fails cleanly."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for name in self.files:
            (self.directory / name).unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Make a file's data, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PageReader:
    """Reads and verifies pages with ``pread`` on cached file descriptors (thread-safe)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, name: str) -> int:
        with self._lock:
            fd = self._fds.get(name)
            if fd is None:
                try:
                    fd = os.open(self.directory / name, os.O_RDONLY)
                except FileNotFoundError:
                    raise CorruptPageError(
                        f"page file {self.directory / name} is missing; the database is damaged"
                    ) from None
                self._fds[name] = fd
            return fd

    def read(self, location: PageLocation) -> Page:
        data = os.pread(self._fd(location.file), location.length, location.offset)
        where = f"{self.directory / location.file} at offset {location.offset}"
        return parse_page(data, location.page_id, where)

    def advise(self, locations: list[PageLocation]) -> None:
        """Ask the operating system to start reading these pages into its cache now
        (``POSIX_FADV_WILLNEED``): the reads run on the device while the caller computes, and
        side by side rather than one ``pread`` after another. A hint: a page that cannot be
        asked for (its file retired meanwhile) is left to the read that needs it, if any."""
        for location in locations:
            try:
                fd = self._fd(location.file)
                os.posix_fadvise(fd, location.offset, location.length, os.POSIX_FADV_WILLNEED)
            except (OSError, CorruptPageError):
                continue

    def forget(self, name: str) -> None:
        """Drop the cached descriptor of a file that is about to be deleted."""
        with self._lock:
            fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
