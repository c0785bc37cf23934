"""`weightdb cache ...` commands."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from weightdb.caching.online_bound import online_bound
from weightdb.caching.simulate import POLICY_NAMES, Budget, SimulationResult, compare, simulate
from weightdb.caching.trace import read_trace
from weightdb.units import format_size, parse_size

app = typer.Typer(
    help="Replay page-request traces under replacement policies.", no_args_is_help=True
)
console = Console()

TraceArg = Annotated[Path, typer.Argument(help="Trace file (JSON, see weightdb.caching.trace).")]
BudgetPages = Annotated[
    int | None, typer.Option("--budget-pages", min=1, help="Pool capacity in pages.")
]
BudgetBytes = Annotated[
    str | None,
    typer.Option(
        "--budget-bytes", help="Pool capacity in bytes, e.g. 256MiB (with or instead of pages)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _budget(pages: int | None, size: str | None) -> Budget:
    try:
        return Budget(pages=pages, bytes=None if size is None else parse_size(size))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _check_policy(name: str) -> str:
    if name not in POLICY_NAMES:
        raise typer.BadParameter(
            f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}"
        )
    return name


@app.command("simulate")
def simulate_command(
    trace: TraceArg,
    policy: Annotated[
        str,
        typer.Option("--policy", callback=_check_policy, help=f"One of {', '.join(POLICY_NAMES)}."),
    ] = "weightdb",
    budget_pages: BudgetPages = None,
    budget_bytes: BudgetBytes = None,
    as_json: AsJson = False,
) -> None:
    """Replay TRACE under one policy and report hits, misses and bytes read."""
    result = simulate(read_trace(trace), policy, _budget(budget_pages, budget_bytes))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"{trace.name} under {policy}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in _cells(result).items():
        table.add_row(metric, value)
    console.print(table)


@app.command("compare")
def compare_command(
    trace: TraceArg,
    budget_pages: BudgetPages = None,
    budget_bytes: BudgetBytes = None,
    as_json: AsJson = False,
) -> None:
    """Replay TRACE under every policy, Belady's optimum (opt) included, side by side, with the
    bytes any online policy must expect to read (the online bound)."""
    loaded, budget = read_trace(trace), _budget(budget_pages, budget_bytes)
    results = compare(loaded, budget)
    if as_json:
        print(json.dumps([result.to_json() for result in results], indent=2))
        return
    opt_bytes = results[-1].bytes_read
    table = Table(title=f"{trace.name}: {results[0].requests} requests, policies against opt")
    table.add_column("policy", no_wrap=True)
    metrics = [metric for metric in _cells(results[0]) if metric != "requests"]
    for metric in [*metrics, "bytes vs opt"]:
        table.add_column(metric, justify="right")
    for result in results:
        cells = _cells(result)
        ratio = result.bytes_read / opt_bytes if opt_bytes else 1.0
        table.add_row(result.policy, *(cells[metric] for metric in metrics), f"{ratio:.3f}")
    bound = online_bound(loaded, budget)
    table.caption = (
        f"online bound: {format_size(bound)}"
        + (f" ({bound / opt_bytes:.3f} x opt)" if opt_bytes else "")
        + ", what any policy that does not know the next query must expect to read"
    )
    console.print(table)


def _cells(result: SimulationResult) -> dict[str, str]:
    return {
        "requests": str(result.requests),
        "hits": str(result.hits),
        "misses": str(result.misses),
        "hit ratio": f"{result.hit_ratio:.3f}",
        "bytes read": format_size(result.bytes_read),
        "evictions": str(result.evictions),
    }
