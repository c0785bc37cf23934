"""``weightdb dedup``: deduplicate models, each losing at most --max-drop of its metric, with
progress and a table."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from weightdb.cli.common import (
    MemoryOption,
    console,
    err_console,
    open_db,
)
from weightdb.cli.vocabulary import (
    JsonOption,
    ModelsOption,
    model_list,
    registry_choice,
)
from weightdb.dedup.api import METHODS
from weightdb.progress import progress_bar
from weightdb.units import format_size

MethodName = registry_choice(METHODS)


def dedup_command(
    models: ModelsOption = None,
    eval_spec: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="family.json or a JSON file of that shape: per model a validation split, a "
            "test split and a metric. Without it only exact deduplication runs.",
        ),
    ] = None,
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="Allowed metric drop per model (0.01 = 1 point).")
    ] = 0.01,
    method: Annotated[MethodName, typer.Option(help="Deduplication method.")] = "weightdb",
    as_json: JsonOption = False,
    memory: MemoryOption = None,
) -> None:
    """Store near-identical blocks once, keeping every model within --max-drop of its metric."""
    names = model_list(models)
    bar, progress = progress_bar(None)
    with open_db(memory) as db, bar:
        report = db.deduplicate(names, eval_spec, max_drop, method=method, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    for note in report.notes:
        err_console.print(note)
    console.print(
        f"{report.method}: {format_size(report.stored_bytes_before)} -> "
        f"{format_size(report.stored_bytes_after)} stored ({report.reduction:.1%} less), "
        f"{report.distinct_blocks_before} -> {report.distinct_blocks_after} blocks, "
        f"{report.evaluations} evaluations, {report.seconds:.1f}s"
    )
    if report.models:
        table = Table("model", "metric", "max drop", "validation", "test", "blocks replaced")
        for name, m in report.models.items():
            table.add_row(
                name,
                m.metric,
                f"{m.budget:g}",
                f"{m.validation_before:.4f} -> {m.validation_after:.4f}",
                f"{m.test_before:.4f} -> {m.test_after:.4f}",
                str(m.blocks_replaced),
            )
        console.print(table)
