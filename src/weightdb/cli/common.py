"""What every `weightdb` command shares: the --db option's value, opening the database,
size options, consoles and byte progress bars. Sub-command modules import from here."""

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from weightdb.database import DEFAULT_BUDGET, Database, connect
from weightdb.errors import WeightDBError
from weightdb.storage.repack import RepackReport
from weightdb.units import format_size, parse_size

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class _State:
    db_path: Path | None = None


state = _State()


def open_db(
    budget: str | None = None, policy: str | None = None, batch_invariant: bool = True
) -> Database:
    if state.db_path is None:
        raise WeightDBError("no database given: pass --db PATH or set WEIGHTDB_DB")
    return connect(
        state.db_path,
        create=False,
        budget=DEFAULT_BUDGET if budget is None else size_option(budget, "--budget"),
        policy=policy,
        batch_invariant=batch_invariant,
    )


def size_option(text: str, option: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def byte_progress(description: str):
    """A rich progress bar over bytes, and the (done, total) callback that advances it."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = bar.add_task(description, total=None)
    return bar, lambda done, total: bar.update(task, advance=done, total=total)


BudgetOption = Annotated[
    str | None,
    typer.Option("--budget", help=f"Buffer pool budget, e.g. 64MiB (default {DEFAULT_BUDGET})."),
]

BatchInvariantOption = Annotated[
    bool,
    typer.Option(
        "--batch-invariant/--no-batch-invariant",
        help="Give every row the same bits whatever batch it is computed in (default); off is "
        "faster at small batches.",
    ),
]

PolicyOption = Annotated[
    str | None,
    typer.Option(
        "--policy", help="Buffer pool replacement policy (default: the database's setting)."
    ),
]

TraceOption = Annotated[
    Path | None,
    typer.Option("--trace", help="Record every page request to this file (for cache simulate)."),
]


def tracing(db: Database, path: Path | None) -> AbstractContextManager:
    """Record ``db``'s page requests to ``path`` while the context is open (if a path is set)."""
    return db.record_trace(path) if path is not None else nullcontext()


def repack_table(report: RepackReport) -> Table:
    """Pages and bytes each model reads, before and after a repack."""
    table = Table("model", "pages read before", "after", "bytes read before", "after")
    for name, after in report.pages_read_after.items():
        before = report.pages_read_before[name]
        table.add_row(
            name,
            str(before["pages"]),
            str(after["pages"]),
            format_size(before["bytes"]),
            format_size(after["bytes"]),
        )
    return table
