"""Progress of long operations: the one callback type they report to, and the rich bar the
command line shows for it.

Storage, ingest, packing, dedup and zoo code call a ``Progress`` and never touch a terminal;
a CLI command builds the bar and its callback with ``progress_bar`` and passes the callback
down. Rich is imported only when a bar is built, so the lower layers stay free of it.
"""

from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    import rich.progress


class Progress(Protocol):
    """Advance by ``n`` of ``total`` units (bytes or items). ``total`` may grow as work is
    found (the packing search gives page types another try). ``stage`` names a part of the
    work that gets a bar of its own (dedup's phases, zoo's training loops); operations with
    one part leave it out, so a two-argument function serves them."""

    def __call__(self, n: int, total: int, stage: str = "", /) -> None: ...


def silent(n: int, total: int, stage: str = "", /) -> None:
    """The ``Progress`` of a caller that shows none."""


ProgressBar: TypeAlias = "tuple[rich.progress.Progress, Progress]"
"""A rich display to enter while the work runs, and the ``Progress`` that moves it."""


def progress_bar(
    description: str | None, unit: Literal["bytes", "items"] = "items", transient: bool = True
) -> ProgressBar:
    """A rich progress display on stderr and the ``Progress`` that moves it.

    ``description`` labels a bar shown at once (indeterminate until the first call); every
    other stage gets its own bar when first reported. Byte bars show sizes, speed and time
    left, item bars a count and time elapsed and left. Enter the display (``with bar:``)
    while the operation runs; ``transient`` bars disappear when it ends.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Display

    counts = (
        (DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn())
        if unit == "bytes"
        else (MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    )
    console = Console(stderr=True)
    display = Display(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        console=console,
        transient=transient,
        # off a terminal a transient bar shows nothing, and rich would print an empty line
        disable=not console.is_interactive,
    )
    tasks = {} if description is None else {"": display.add_task(description, total=None)}

    def advance(n: int, total: int, stage: str = "", /) -> None:
        if stage not in tasks:
            tasks[stage] = display.add_task(stage or description or "", total=total)
        display.update(tasks[stage], advance=n, total=total)

    return display, advance
