"""Rich progress bars for long builds, and a silent stand-in for library and test use."""

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


class Reporter(Protocol):
    """What a family builder needs to show progress: wrap an iterable in a labelled bar."""

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]: ...


class SilentReporter:
    """Reports nothing; used when the caller shows no terminal."""

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        yield from items


class RichReporter:
    """Shows one bar per tracked loop, kept on screen once finished."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def track(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        task = self._progress.add_task(label, total=total)
        for item in items:
            yield item
            self._progress.advance(task)


def rich_progress() -> Progress:
    """The progress display used by `weightdb zoo build`."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
