"""`weightdb packing ...` commands."""

import typer

app = typer.Typer(help="Page-packing algorithms on instance files.", no_args_is_help=True)
