"""The `weightdb` command line.

Commands that touch a database take it from ``--db PATH`` or ``WEIGHTDB_DB``. Errors a user can
fix print one line on stderr and exit with status 1.
"""

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from weightdb.caching.cli import app as cache_app
from weightdb.errors import WeightDBError
from weightdb.packing.cli import app as packing_app
from weightdb.zoo.cli import app as zoo_app

app = typer.Typer(
    help="weightdb: a relational database for deep learning models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(packing_app, name="packing")
app.add_typer(zoo_app, name="zoo")
app.add_typer(cache_app, name="cache")

console = Console()
err_console = Console(stderr=True)


class _State:
    db_path: Path | None = None


state = _State()


@app.callback()
def _global(
    db: Annotated[
        Path | None,
        typer.Option("--db", envvar="WEIGHTDB_DB", help="Database directory (or WEIGHTDB_DB)."),
    ] = None,
) -> None:
    state.db_path = db


def main() -> None:
    try:
        app()
    except WeightDBError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(1)
