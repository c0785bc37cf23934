"""What the `weightdb` commands that open a database share: the --db option's value, opening
the database, consoles, byte progress bars, the pool options and the repack table."""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from weightdb.cli.vocabulary import registry_choice, size_option
from weightdb.database import DEFAULT_BUDGET, Database, connect
from weightdb.errors import WeightDBError
from weightdb.progress import ProgressBar, progress_bar
from weightdb.storage.policies import POLICIES
from weightdb.storage.repack import RepackReport
from weightdb.units import format_size

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class CliState:
    """Options of the root command that its sub-commands read (today only --db)."""

    db_path: Path | None = None


state = CliState()


def db_path() -> Path:
    """The --db path, or the error that asks for one."""
    if state.db_path is None:
        raise WeightDBError("no database given: pass --db PATH or set WEIGHTDB_DB")
    return state.db_path


def open_db(
    memory: int | None = None, policy: str | None = None, batch_invariant: bool = True
) -> Database:
    return connect(
        db_path(),
        create=False,
        budget=DEFAULT_BUDGET if memory is None else memory,
        policy=policy,
        batch_invariant=batch_invariant,
    )


def byte_progress(description: str) -> ProgressBar:
    """A rich progress bar over bytes, and the callback that advances it."""
    return progress_bar(description, "bytes")


# --- options of the commands that open a database ----------------------------------------------

MemoryOption = Annotated[
    int | None,
    size_option(
        "--memory",
        help_text=f"Buffer pool memory, e.g. 256MiB; at least one page (default {DEFAULT_BUDGET}).",
    ),
]

BatchInvariantOption = Annotated[
    bool,
    typer.Option(
        "--batch-invariant/--no-batch-invariant",
        help="Give every row the same bits whatever batch it is computed in (default); off is "
        "faster at small batches.",
    ),
]

PolicyName = registry_choice(POLICIES)

PolicyOption = Annotated[
    PolicyName | None,
    typer.Option(
        "--policy",
        help="Buffer pool replacement policy (default: the database's setting).",
        show_default=False,
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
