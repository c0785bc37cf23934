"""`weightdb zoo ...` commands."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from weightdb.units import format_size
from weightdb.zoo.build import SIZES, build_family
from weightdb.zoo.families import families
from weightdb.zoo.manifest import read_manifest
from weightdb.zoo.progress import RichReporter, rich_progress

app = typer.Typer(
    help="Build offline model families for tests and benchmarks.", no_args_is_help=True
)
console = Console()


@app.command("list")
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


@app.command()
def build(
    family: Annotated[str, typer.Argument(help="Family name, see `weightdb zoo list`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to build the family into.")],
    size: Annotated[str, typer.Option(help="small (seconds, for tests) or full.")] = "small",
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    total: Annotated[str | None, typer.Option(help="scale: total size, e.g. 30GiB.")] = None,
    models: Annotated[int | None, typer.Option(help="scale: number of models.")] = None,
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
    """Build FAMILY into --out, or do nothing if an identical build is already there."""
    given: dict[str, Any] = {"total": total, "models": models, "fraction": fraction}
    given["long_steps"] = long_steps
    given["wordnet"] = str(wordnet) if wordnet else None
    with rich_progress() as progress:
        result = build_family(
            family,
            out,
            size,
            seed,
            {k: v for k, v in given.items() if v is not None},
            RichReporter(progress),
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
