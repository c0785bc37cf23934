"""Read-ahead: the pages a request is about to miss, asked of the operating system a few at a
time while the engine works on the ones before.

A model's plan reads the same weights in the same order every run, so the pages a request will
pin are known when it starts, and a gather knows its pages before it copies rows. Cold ``pread``
calls one after another ran at 0.6 GB/s on this machine's disk, which serves 5 GB/s to reads
side by side; so the pool tells the kernel (``POSIX_FADV_WILLNEED``) about the next missing
pages before it needs them. Pages asked for wait in the operating system's cache, which a memory
cgroup counts like the pool: at most ``WINDOW_BYTES``, or half the room the pool has free if that
is more, are asked for and not yet loaded at any time, so read-ahead needs little memory beside
the budget however full the pool is, and a pool with room (a first request) asks for all it can.
"""

from collections import deque
from collections.abc import Callable, Iterable

from weightdb.storage.page_files import PageLocation

WINDOW_BYTES = 32 << 20  # eight 4 MiB pages in flight: enough to keep the device busy


class ReadAhead:
    """Which pages to ask for next; the pool calls it under its lock and does the asking."""

    def __init__(
        self, locate: Callable[[int], PageLocation], window_bytes: int | None = None
    ) -> None:
        self._locate = locate
        self._least_window = WINDOW_BYTES if window_bytes is None else window_bytes
        self._upcoming: deque[int] = deque()
        self._outstanding: dict[int, int] = {}  # page -> bytes asked for and not yet loaded
        self._outstanding_bytes = 0

    def expect(
        self,
        page_ids: Iterable[int],
        absent: Callable[[int], bool],
        free: int | None,
        first: bool = False,
    ) -> list[PageLocation]:
        """A request is about to pin ``page_ids`` in order (with ``first``, before the pages
        already expected, else instead of them); returns the pages to ask for now. ``absent``
        says whether a page is still to be read, ``free`` is the pool's free room (None:
        unbounded)."""
        if first:
            self._upcoming.extendleft(reversed(list(page_ids)))
        else:  # a new run: what the last one asked for and never pinned is not waited for
            self._upcoming = deque(page_ids)
            self._outstanding.clear()
            self._outstanding_bytes = 0
        return self._more(absent, free)

    def arrived(
        self, page_id: int, absent: Callable[[int], bool], free: int | None
    ) -> list[PageLocation]:
        """Page ``page_id`` was loaded; returns the pages to ask for now that it made room."""
        self._outstanding_bytes -= self._outstanding.pop(page_id, 0)
        return self._more(absent, free)

    def _more(self, absent: Callable[[int], bool], free: int | None) -> list[PageLocation]:
        window = None if free is None else max(self._least_window, free // 2)
        asked = []
        while self._upcoming:
            page_id = self._upcoming[0]
            if page_id in self._outstanding or not absent(page_id):
                self._upcoming.popleft()
                continue
            location = self._locate(page_id)
            over = window is not None and self._outstanding_bytes + location.length > window
            if over and self._outstanding:
                break
            self._upcoming.popleft()
            self._outstanding[page_id] = location.length
            self._outstanding_bytes += location.length
            asked.append(location)
        return asked
