"""What a family builder reports progress to: labelled loops, shown through a ``Progress``
(``weightdb.progress``) or not at all."""

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from weightdb.progress import Progress

T = TypeVar("T")


class Reporter(Protocol):
    """What a family builder needs to show progress: wrap an iterable in a labelled bar."""

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]: ...


class SilentReporter:
    """Reports nothing; used when the caller shows no terminal."""

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        yield from items


class ProgressReporter:
    """Reports each tracked loop as a stage of ``progress``, one step per item."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        self._progress(0, total, label)  # the loop's bar appears before its first item ends
        for item in items:
            yield item
            self._progress(1, total, label)
