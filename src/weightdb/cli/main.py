"""The `weightdb` command line.

Commands that touch a database take it from ``--db PATH`` or ``WEIGHTDB_DB``. Errors a user can
fix print one line on stderr and exit with status 1.
"""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from weightdb.cli.cache import app as cache_app
from weightdb.cli.common import (
    BatchInvariantOption,
    MemoryOption,
    PolicyName,
    PolicyOption,
    TraceOption,
    byte_progress,
    console,
    err_console,
    open_db,
    repack_table,
    state,
    tracing,
)
from weightdb.cli.dedup import dedup_command
from weightdb.cli.packing import (
    TIME_LIMIT_OPTION,
    AlgorithmName,
    deprecated_packing_app,
    search_progress,
)
from weightdb.cli.packing import app as packing_app
from weightdb.cli.predict_table import predict_table_command
from weightdb.cli.serve import OLD_SERVE_SPELLINGS, serve_command
from weightdb.cli.tensor_files import read_inputs, write_outputs
from weightdb.cli.vocabulary import (
    JsonOption,
    OldSpelling,
    VocabularyGroup,
    output_option,
    registry_choice,
    size_option,
    vocabulary_command,
    warn_deprecated,
)
from weightdb.cli.zoo import app as zoo_app
from weightdb.database import connect
from weightdb.demo import SCALES, run_demo
from weightdb.errors import WeightDBError
from weightdb.packing import DEFAULT_ALGORITHM, DEFAULT_TIME_LIMIT
from weightdb.storage.settings import Settings
from weightdb.units import format_size

app = typer.Typer(
    cls=VocabularyGroup,
    help="weightdb: a relational database for deep learning models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
OLD_POOL_SPELLING = OldSpelling("--memory")
"""``--budget``, the pool's bytes until this release."""

app.add_typer(packing_app, name="packing-study")
app.add_typer(deprecated_packing_app, name="packing", hidden=True)
app.add_typer(zoo_app, name="zoo")
app.add_typer(cache_app, name="cache")
app.command("serve", cls=vocabulary_command(**OLD_SERVE_SPELLINGS))(serve_command)
app.command("dedup", cls=vocabulary_command(budget=OLD_POOL_SPELLING))(dedup_command)
app.command("predict-table", cls=vocabulary_command())(predict_table_command)


@app.callback()
def _global(
    db: Annotated[
        Path | None,
        typer.Option("--db", envvar="WEIGHTDB_DB", help="Database directory (or WEIGHTDB_DB)."),
    ] = None,
) -> None:
    state.db_path = db


_DEFAULT_SETTINGS = Settings()


@app.command(cls=vocabulary_command())
def init(
    path: Annotated[Path, typer.Argument(help="Directory to create the database in.")],
    block_shape: Annotated[
        str, typer.Option(help="Block shape R,C that tensors are cut into.")
    ] = "{},{}".format(*_DEFAULT_SETTINGS.block_shape),
    page_size: Annotated[
        int, size_option(help_text="Page size, e.g. 4MiB.", default="4MiB")
    ] = _DEFAULT_SETTINGS.page_size,
    policy: Annotated[
        PolicyName, typer.Option(help="Buffer pool replacement policy.")
    ] = _DEFAULT_SETTINGS.policy,
    lossless: Annotated[
        bool,
        typer.Option(
            "--lossless/--no-lossless",
            help="Code new blocks at import: XOR against the parent's, byte planes, zstd.",
        ),
    ] = _DEFAULT_SETTINGS.lossless,
) -> None:
    """Create an empty database."""
    try:
        rows, cols = (int(x) for x in block_shape.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"{block_shape!r} is not R,C (two integers)", param_hint="--block-shape"
        ) from None
    settings = Settings(
        block_rows=rows,
        block_cols=cols,
        page_size=page_size,
        policy=policy,
        lossless=lossless,
    )
    if (path / "config.toml").exists():
        raise WeightDBError(f"a database already exists at {path}")
    with connect(path, create=True, settings=settings) as db:
        console.print(
            f"created database {db.path} (blocks {rows}x{cols}, "
            f"pages {format_size(db.settings.page_size)})"
        )


@app.command("import", cls=vocabulary_command())
def import_(
    source: Annotated[
        Path, typer.Argument(help=".safetensors, .npz, .onnx, .pt file or Hugging Face folder.")
    ],
    name: Annotated[str, typer.Option("--name", help="Name of the model in the database.")],
    parent: Annotated[
        str | None,
        typer.Option(help="Stored model this one descends from (found if not given)."),
    ] = None,
    lossless: Annotated[
        bool | None,
        typer.Option(
            "--lossless/--no-lossless",
            help="Code new blocks against the parent's (default: the database's setting).",
        ),
    ] = None,
    graph: Annotated[
        Path | None,
        typer.Option(help="ONNX file whose graph runs these weights (names and shapes checked)."),
    ] = None,
) -> None:
    """Import a model; blocks identical to stored ones are stored once."""
    with open_db() as db:
        bar, advance = byte_progress(f"importing {name}")
        with bar:
            info = db.import_model(
                source, name, progress=advance, parent=parent, lossless=lossless, graph=graph
            )
        console.print(
            f"imported {info.name}: {info.tensors} tensors, {format_size(info.logical_bytes)}; "
            f"{format_size(info.new_block_bytes)} of new blocks stored; "
            + (
                "can predict"
                if info.can_predict
                else f"cannot predict: {info.cannot_predict_because}"
            ),
            highlight=False,
            markup=False,
        )


@app.command(cls=vocabulary_command())
def export(
    name: Annotated[str, typer.Argument(help="Model to export.")],
    output: Annotated[
        Path | None, output_option("File to write: .safetensors, .onnx or .npz.")
    ] = None,
    old_output: Annotated[Path | None, typer.Argument(hidden=True, show_default=False)] = None,
) -> None:
    """Export a model, bit-identical to what was imported."""
    out = _export_path(output, old_output)
    with open_db() as db:
        bar, advance = byte_progress(f"exporting {name}")
        with bar:
            db.export_model(name, out, progress=advance)
        console.print(f"wrote {out}")


def _export_path(output: Path | None, old_output: Path | None) -> Path:
    """``--output``, or the positional file of earlier releases (with a warning)."""
    if old_output is None:
        if output is None:
            raise typer.BadParameter("give the file to write with --output/-o PATH")
        return output
    if output is not None:
        raise typer.BadParameter("give the file to write once, with --output/-o PATH")
    warn_deprecated("`export NAME FILE`", "`export NAME --output FILE`")
    return old_output


@app.command("ls", cls=vocabulary_command())
def list_models(as_json: JsonOption = False) -> None:
    """List stored models, and whether the server batches requests for each across clients
    (only when its graph provably keeps rows apart)."""
    with open_db() as db:
        models = db.models()
        batching = {m.name: db.row_independence(m.name) for m in models}
    if as_json:
        rows = [
            {
                **asdict(m),
                "can_predict": m.can_predict,
                "batched_across_requests": batching[m.name].independent,
                "batching_reason": batching[m.name].reason,
            }
            for m in models
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "model", "parent", "format", "tensors", "bytes", "can predict", "batching", "imported"
    )
    for m in models:
        table.add_row(
            m.name,
            m.parent or "",
            m.format,
            str(m.tensors),
            format_size(m.logical_bytes),
            "yes" if m.can_predict else "no",
            "across requests" if batching[m.name].independent else "per request",
            m.created_at,
        )
    console.print(table)
    for m in models:
        if not m.can_predict:
            console.print(
                f"{m.name}: cannot predict: {m.cannot_predict_because}",
                highlight=False,
                markup=False,
            )
        elif not batching[m.name].independent:
            console.print(f"{m.name}: each request runs alone, {batching[m.name]}", highlight=False)


@app.command(cls=vocabulary_command())
def stats(as_json: JsonOption = False) -> None:
    """Storage statistics: logical versus stored bytes, blocks and pages."""
    with open_db() as db:
        numbers = db.stats()
    if as_json:
        print(json.dumps(numbers, indent=2))
        return
    table = Table("statistic", "value", title=f"weightdb {state.db_path}")
    for key in ("models", "tensors", "distinct_blocks", "block_references", "pages", "page_files"):
        table.add_row(key, f"{numbers[key]:,}")
    for key in ("logical_bytes", "stored_bytes", "page_bytes", "page_file_bytes"):
        table.add_row(key, format_size(numbers[key]))
    for tier, saved in numbers["saved_bytes_by_tier"].items():
        table.add_row(f"saved by the {tier} tier", format_size(saved))
    table.add_row("dedup_ratio", f"{numbers['dedup_ratio']:.2f}x")
    console.print(table)


@app.command("pack", cls=vocabulary_command())
def pack_command(
    algorithm: Annotated[
        AlgorithmName,
        typer.Option(
            "--algorithm",
            "-a",
            help="Packing algorithm: greedy1 stores every block once; the others copy shared "
            "blocks where that saves pages read.",
        ),
    ] = DEFAULT_ALGORITHM,
    as_json: JsonOption = False,
    time_limit: Annotated[float, TIME_LIMIT_OPTION] = DEFAULT_TIME_LIMIT,
    force: Annotated[
        bool, typer.Option("--force", help="Store the new layout even if it is not better.")
    ] = False,
) -> None:
    """Repack pages so that every model reads few pages; atomic and crash-safe. Keeps the
    current layout unless the new one reads fewer pages per request (weighted by how often
    each model is served), or as many from fewer pages or bytes."""
    with open_db() as db:
        bar, progress = search_progress(algorithm)
        with bar:
            report = db.pack(algorithm, time_limit=time_limit, progress=progress, force=force)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    if report.search_finished is False:
        console.print(
            f"the {report.algorithm} search stopped at the time limit ({time_limit:g}s) with "
            "its best layout so far; a larger --time-limit may find fewer pages"
        )
    if report.kept_current:
        candidate = report.candidate
        console.print(
            f"kept the current layout: {report.pages_before} pages, "
            f"{report.weighted_pages_read_before:.2f} pages read per request; the "
            f"{report.algorithm} layout was not better ({candidate['pages']} pages, "
            f"{candidate['weighted_pages_read']:.2f} pages read per request, "
            f"{format_size(int(candidate['page_bytes']))}; --force stores it anyway)"
        )
        return
    console.print(
        f"{report.pages_before} pages -> {report.pages_after} (lower bound "
        f"{report.lower_bound_pages}, {report.blocks_per_page} blocks per page, "
        f"{report.copied_blocks} blocks copied, {format_size(report.page_bytes_before)} -> "
        f"{format_size(report.page_bytes_after)}, {report.seconds:.2f}s)"
    )
    console.print(repack_table(report))


@app.command("compress", cls=vocabulary_command())
def compress_command(
    lossless: Annotated[
        bool,
        typer.Option(
            "--lossless/--raw", help="Code every block (default), or store every block raw again."
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Code the stored blocks with the lossless tier; atomic and crash-safe, like pack."""
    with open_db() as db:
        bar, advance = byte_progress("compressing pages")
        with bar:
            report = db.compress(lossless, progress=advance)
    if as_json:
        print(json.dumps(asdict(report), indent=2))
        return
    console.print(
        f"{report.pages_before} pages, {format_size(report.page_bytes_before)} -> "
        f"{report.pages_after} pages, {format_size(report.page_bytes_after)}; "
        f"{report.coded_blocks} blocks coded, {report.delta_blocks} of them as deltas "
        f"({report.seconds:.1f}s)"
    )
    for child, parent in report.parents_found.items():
        console.print(f"  parent of {child}: {parent}")


@app.command("rm", cls=vocabulary_command())
def remove(name: Annotated[str, typer.Argument(help="Model to remove.")]) -> None:
    """Remove a model; blocks no other model uses are freed."""
    with open_db() as db:
        db.remove_model(name)
    console.print(f"removed {name}")


@app.command(cls=vocabulary_command())
def verify() -> None:
    """Check the catalog file and every model's rows against their digests, then read every
    page and check its checksum and block digests against the catalog."""
    with open_db() as db:
        bar, advance = byte_progress("verifying pages")
        with bar:
            pages = db.verify(progress=advance)
    console.print(f"ok: catalog and {pages} pages verified")


@app.command(cls=vocabulary_command(budget=OLD_POOL_SPELLING))
def predict(
    name: Annotated[str, typer.Argument(help="Model to run.")],
    input_file: Annotated[
        Path, typer.Option("--input", help=".npz/.npy/.parquet with one entry per graph input.")
    ],
    output: Annotated[
        Path | None, output_option("Write the outputs to this .npz/.npy/.parquet file.")
    ] = None,
    memory: MemoryOption = None,
    policy: PolicyOption = None,
    trace: TraceOption = None,
    batch_invariant: BatchInvariantOption = True,
) -> None:
    """Run a model on inputs from a file; weights stream through the buffer pool."""
    with open_db(memory, policy, batch_invariant) as db, tracing(db, trace):
        outputs = db.predict(name, read_inputs(input_file, db.inputs(name)))
        pool = db.pool.stats()
    if output is not None:
        write_outputs(output, outputs)
    table = Table("output", "dtype", "shape", "first row")
    for key, array in outputs.items():
        first = (
            np.array2string(array.reshape(len(array), -1)[0][:6], precision=4) if array.size else ""
        )
        table.add_row(key, str(array.dtype), str(list(array.shape)), first)
    console.print(table)
    console.print(
        f"read {format_size(pool.bytes_read)} from storage ({pool.misses} page reads, "
        f"{pool.hits} hits, {pool.evictions} evictions)" + (f"; wrote {output}" if output else "")
    )


@app.command(cls=vocabulary_command(budget=OLD_POOL_SPELLING))
def sql(
    query: Annotated[str, typer.Argument(help="One SQL statement (DuckDB dialect).")],
    as_json: JsonOption = False,
    memory: MemoryOption = None,
    policy: PolicyOption = None,
    trace: TraceOption = None,
    batch_invariant: BatchInvariantOption = True,
) -> None:
    """Run SQL over feature tables with predict(), predict_label(), embed() and weightdb.*."""
    with open_db(memory, policy, batch_invariant) as db, tracing(db, trace):
        result = db.sql(query)
    rows = result.to_pylist()
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(*result.column_names)
    for row in rows:
        table.add_row(*(_cell(value) for value in row.values()))
    console.print(table)


def _cell(value: object) -> str:
    if isinstance(value, list) and len(value) > 8:
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:8])
        return f"[{shown}, ... ({len(value)} values)]"
    return str(value)


@app.command(cls=vocabulary_command(path=OldSpelling("--output")))
def demo(
    output: Annotated[Path, output_option("Directory to build the demo database in.")] = Path(
        "demo-db"
    ),
    scale: Annotated[
        registry_choice(SCALES), typer.Option(help="full (a few minutes) or small (a minute).")
    ] = "full",
) -> None:
    """Tour storage, out-of-memory serving against PyTorch, SQL and HTTP, on zoo families."""
    run_demo(output, console, scale)


@app.command(cls=vocabulary_command())
def bench(
    suites: Annotated[
        list[str] | None, typer.Argument(help="Suites to run, e.g. dedup caching (default: all).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Small sizes, few repeats (minutes).")] = False,
) -> None:
    """Run the benchmark suites of this source checkout (as `make bench` does) and write
    benchmarks/results/REPORT.md."""
    checkout = Path(__file__).resolve().parents[3]  # src/weightdb/cli/main.py
    if not (checkout / "benchmarks" / "run.py").is_file():
        raise WeightDBError(
            "weightdb bench runs the benchmarks of a source checkout, and this installation has "
            "none; clone the weightdb repository and run `make bench` (or `weightdb bench`) there"
        )
    command = [sys.executable, "-m", "benchmarks.run", *(["--quick"] if quick else [])]
    sys.exit(subprocess.call([*command, *(suites or [])], cwd=checkout))


def main() -> None:
    try:
        app()
    except WeightDBError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(1)
