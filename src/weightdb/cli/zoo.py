"""`weightdb zoo ...` commands."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from weightdb.cli.common import console
from weightdb.cli.vocabulary import (
    OldSpelling,
    VocabularyGroup,
    output_option,
    registry_choice,
    vocabulary_command,
)
from weightdb.progress import progress_bar
from weightdb.units import format_size
from weightdb.zoo.build import SIZES, build_family
from weightdb.zoo.families import families
from weightdb.zoo.manifest import read_manifest
from weightdb.zoo.progress import ProgressReporter

app = typer.Typer(
    cls=VocabularyGroup,
    help="Build offline model families for tests and benchmarks.",
    no_args_is_help=True,
)
FamilySize = registry_choice(SIZES)


@app.command("list", cls=vocabulary_command())
def list_families() -> None:
    """List the families that `weightdb zoo build` can make."""
    table = Table("family", "what", "options (small / full defaults)")
    for family in families():
        options = "; ".join(
            f"{size}: " + ", ".join(f"{k}={v}" for k, v in family.defaults[size].items())
            for size in SIZES
            if family.defaults.get(size)
        )
        table.add_row(family.name, family.summary, options or "-")
    console.print(table)


@app.command(
    cls=vocabulary_command(out=OldSpelling("--output"), models=OldSpelling("--model-count"))
)
def build(
    family: Annotated[str, typer.Argument(help="Family name, see `weightdb zoo list`.")],
    out: Annotated[Path, output_option("Directory to build the family into.")],
    size: Annotated[
        FamilySize, typer.Option(help="small takes seconds (for tests); full is the real family.")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    total: Annotated[
        str | None, typer.Option(metavar="SIZE", help="scale: total size, e.g. 30GiB.")
    ] = None,
    model_count: Annotated[
        int | None, typer.Option(min=1, help="scale: number of models.", show_default=False)
    ] = None,
    fraction: Annotated[
        float | None, typer.Option(help="scale: fraction of blocks a variant changes.")
    ] = None,
    wordnet: Annotated[
        Path | None, typer.Option(help="text families, full size: WordNet data directory.")
    ] = None,
    long_steps: Annotated[
        int | None, typer.Option(help="minilm-finetunes: add a fine-tune of this many steps.")
    ] = None,
) -> None:
    """Build FAMILY into --output, or do nothing if an identical build is already there."""
    given: dict[str, Any] = {"total": total, "models": model_count, "fraction": fraction}
    given["long_steps"] = long_steps
    given["wordnet"] = str(wordnet) if wordnet else None
    bar, progress = progress_bar(None, transient=False)
    with bar:
        result = build_family(
            family,
            out,
            size,
            seed,
            {k: v for k, v in given.items() if v is not None},
            ProgressReporter(progress),
        )
    manifest = read_manifest(result.manifest.parent)
    verb = "built" if result.built else "already built (cached)"
    console.print(f"{manifest['name']} ({manifest['size']}, seed {manifest['seed']}) {verb}:")
    table = Table("model", "parent", "frozen", "parameters", "bytes", "test accuracy")
    for model in manifest["models"]:
        accuracy = model["accuracy"]["test"]
        table.add_row(
            model["name"],
            model["parent"] or "-",
            ", ".join(model["frozen"]) or "-",
            f"{model['parameters']:,}",
            format_size(model["bytes"]),
            "not measured" if accuracy is None else f"{accuracy:.3f}",
        )
    console.print(table)
    console.print(f"family.json: {result.manifest}")
