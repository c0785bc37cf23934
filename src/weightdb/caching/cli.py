"""`weightdb cache ...` commands."""

import typer

app = typer.Typer(help="Replay page-request traces under replacement policies.", no_args_is_help=True)
