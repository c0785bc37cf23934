"""`weightdb zoo ...` commands."""

import typer

app = typer.Typer(
    help="Build offline model families for tests and benchmarks.", no_args_is_help=True
)
