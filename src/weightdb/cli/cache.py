"""`weightdb cache ...` commands."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from weightdb.caching.online_bound import online_bound
from weightdb.caching.simulate import POLICY_NAMES, Budget, SimulationResult, compare, simulate
from weightdb.caching.trace import read_trace
from weightdb.cli.common import console
from weightdb.cli.vocabulary import (
    JsonOption,
    OldSpelling,
    VocabularyGroup,
    registry_choice,
    size_option,
    vocabulary_command,
    warn_deprecated,
)
from weightdb.storage.policies import DEFAULT_POLICY
from weightdb.units import format_size

app = typer.Typer(
    cls=VocabularyGroup,
    help="Replay page-request traces under replacement policies.",
    no_args_is_help=True,
)
OLD_SPELLINGS = vocabulary_command(budget_bytes=OldSpelling("--memory"))
SimulatedPolicy = registry_choice(POLICY_NAMES)

TraceArg = Annotated[Path, typer.Argument(help="Trace file (JSON, see weightdb.caching.trace).")]
PoolMemory = Annotated[
    int | None, size_option("--memory", help_text="Memory of the simulated pool, e.g. 256MiB.")
]
OldBudgetPages = Annotated[int | None, typer.Option("--budget-pages", min=1, hidden=True)]


def _budget(memory: int | None, old_pages: int | None) -> Budget:
    """The pool's capacity from --memory (and, for one more release, --budget-pages)."""
    if old_pages is not None:
        warn_deprecated("--budget-pages", "--memory SIZE")
    if memory is None and old_pages is None:
        raise typer.BadParameter(
            "the simulated pool needs a memory budget: pass --memory SIZE, e.g. 256MiB"
        )
    return Budget(pages=old_pages, bytes=memory)


@app.command("simulate", cls=OLD_SPELLINGS)
def simulate_command(
    trace: TraceArg,
    policy: Annotated[
        SimulatedPolicy,
        typer.Option("--policy", help="Replacement policy; opt is Belady's offline optimum."),
    ] = DEFAULT_POLICY,
    memory: PoolMemory = None,
    budget_pages: OldBudgetPages = None,
    as_json: JsonOption = False,
) -> None:
    """Replay TRACE under one policy and report hits, misses and bytes read."""
    result = simulate(read_trace(trace), policy, _budget(memory, budget_pages))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"{trace.name} under {policy}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in _cells(result).items():
        table.add_row(metric, value)
    console.print(table)


@app.command("compare", cls=OLD_SPELLINGS)
def compare_command(
    trace: TraceArg,
    memory: PoolMemory = None,
    budget_pages: OldBudgetPages = None,
    as_json: JsonOption = False,
) -> None:
    """Replay TRACE under every policy, Belady's optimum (opt) included, side by side, with the
    bytes any online policy must expect to read (the online bound)."""
    loaded, budget = read_trace(trace), _budget(memory, budget_pages)
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
    table.caption = bound_caption(online_bound(loaded, budget), opt_bytes)
    console.print(table)


def bound_caption(bound: int, opt_bytes: int) -> str:
    """What the online bound means. It leaves out the reads that first fill the pool, so a pool
    that holds every page the trace reads has a bound of 0 B: say so, not "0.000 x opt"."""
    if bound == 0:
        return (
            "online bound: 0 B: the pool holds every page the trace reads, so beyond the reads "
            f"that first fill it (opt's {format_size(opt_bytes)}) no policy need read anything"
        )
    ratio = f" ({bound / opt_bytes:.3f} x opt)" if opt_bytes else ""
    return (
        f"online bound: {format_size(bound)}{ratio}, what any policy that does not know the next "
        "query must expect to read, not counting the reads that first fill the pool"
    )


def _cells(result: SimulationResult) -> dict[str, str]:
    return {
        "requests": str(result.requests),
        "hits": str(result.hits),
        "misses": str(result.misses),
        "hit ratio": f"{result.hit_ratio:.3f}",
        "bytes read": format_size(result.bytes_read),
        "evictions": str(result.evictions),
    }
