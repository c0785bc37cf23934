"""`weightdb packing-study ...`: the offline study of page-packing algorithms on instance files
(`weightdb pack` repacks a database)."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from weightdb.cli.common import console
from weightdb.cli.vocabulary import (
    JsonOption,
    OldSpelling,
    VocabularyGroup,
    duration_option,
    output_option,
    registry_choice,
    vocabulary_command,
    warn_deprecated,
)
from weightdb.packing.instance import load_instance
from weightdb.packing.solve import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    DEFAULT_TIME_LIMIT,
    PackingResult,
    solve,
)
from weightdb.progress import ProgressBar, progress_bar

app = typer.Typer(
    cls=VocabularyGroup,
    help="Study page-packing algorithms offline, on instance files.",
    no_args_is_help=True,
)
deprecated_packing_app = typer.Typer(
    cls=VocabularyGroup, help="Deprecated name of packing-study.", no_args_is_help=True
)


@deprecated_packing_app.callback()
def _warn_packing() -> None:
    warn_deprecated("`weightdb packing`", "`weightdb packing-study`")


AlgorithmName = registry_choice(ALGORITHMS)
TIME_LIMIT_HELP = (
    "Time allowed, e.g. 30s or 500ms: the local search keeps the best layout found by then, "
    "optimal the best its solver found; the netsDB packers are single passes."
)
TIME_LIMIT_OPTION = duration_option(
    "--time-limit", help_text=TIME_LIMIT_HELP, default_seconds=DEFAULT_TIME_LIMIT
)


def search_progress(algorithm: str) -> ProgressBar:
    """A rich progress bar over the page types the search tries (on stderr, gone when done),
    and the callback that moves it; other algorithms show it without a total."""
    return progress_bar(f"packing ({algorithm}, page types tried)")


@deprecated_packing_app.command("solve", cls=vocabulary_command(layout=OldSpelling("--output")))
@app.command("solve", cls=vocabulary_command(layout=OldSpelling("--output")))
def solve_command(
    instance_path: Annotated[
        Path, typer.Argument(metavar="INSTANCE.json", help="Instance in the netsdb-packing format.")
    ],
    algorithm: Annotated[
        AlgorithmName, typer.Option("--algorithm", "-a", help="Packing algorithm.")
    ] = DEFAULT_ALGORITHM,
    layout_path: Annotated[
        Path | None,
        output_option("Write the layout (page index -> block ids) to this JSON file."),
    ] = None,
    as_json: JsonOption = False,
    time_limit: Annotated[float, TIME_LIMIT_OPTION] = DEFAULT_TIME_LIMIT,
) -> None:
    """Pack an instance's blocks into pages and report pages, copies and pages read per model."""
    instance = load_instance(instance_path)
    bar, progress = search_progress(algorithm)
    with bar:
        result = solve(instance, algorithm, time_limit, progress)
    if layout_path is not None:
        pages = {str(index): list(page) for index, page in enumerate(result.layout.pages)}
        layout_path.write_text(json.dumps(pages) + "\n")
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2))
    else:
        _print_table(result)


def _print_table(result: PackingResult) -> None:
    summary = result.summary()
    table = Table(title=f"{summary['instance']}: {result.algorithm}", show_header=False)
    facts = {
        "pages": summary["pages"],
        "lower bound (ceil(distinct / l))": summary["lower_bound_pages"],
        "distinct / stored blocks": f"{summary['distinct_blocks']} / {summary['stored_blocks']}",
        "copied blocks": summary["copied_blocks"],
        "pages read per request (frequency-weighted)": summary["weighted_pages_read"],
        "seconds": f"{summary['seconds']:.3f}",
    }
    if result.search_finished is False:
        facts["search"] = "stopped at the time limit (best layout so far)"
    if result.proved_optimal is not None:
        facts["proved optimal"] = "yes" if result.proved_optimal else "no (time limit)"
        facts["proved bound"] = summary["bound_pages"]
    for name, pages in summary["netsdb_reference_pages"].items():
        facts[f"netsDB {name}"] = pages
    for name, value in facts.items():
        table.add_row(name, str(value))
    console.print(table)
    models = Table("model", "blocks", "pages read", "frequency")
    for model, row in summary["models"].items():
        models.add_row(model, str(row["blocks"]), str(row["pages_read"]), f"{row['frequency']:g}")
    console.print(models)
