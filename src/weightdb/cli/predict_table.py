"""`weightdb predict-table`: predictions for every row of a Parquet table, locally or on Ray."""

from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer

from weightdb.cli.common import MemoryOption, console, db_path
from weightdb.cli.vocabulary import output_option
from weightdb.database import DEFAULT_BUDGET
from weightdb.scaleout.table_predict import check_model_choice, predict_table, read_parquet
from weightdb.units import parse_size


def predict_table_command(
    input_table: Annotated[Path, typer.Argument(help="Parquet table with a feature column.")],
    features: Annotated[str, typer.Option(help="Column holding each row's features (a list).")],
    output: Annotated[Path, output_option("Parquet file to write: input + prediction.")],
    model: Annotated[str | None, typer.Option(help="Model to run on every row.")] = None,
    model_column: Annotated[
        str | None, typer.Option(help="Column naming each row's model (instead of --model).")
    ] = None,
    use_ray: Annotated[
        bool,
        typer.Option("--ray", help="Run on the Ray cluster RAY_ADDRESS names, else a local one."),
    ] = False,
    actors: Annotated[int, typer.Option(min=1, help="Ray actors, each with its own pool.")] = 1,
    memory: MemoryOption = None,
) -> None:
    """Predict every row of INPUT_TABLE; the output keeps the input's columns and order and adds
    `prediction`, the model's first output as a list of floats."""
    path = db_path()
    check_model_choice(model, model_column)
    pool_bytes = memory if memory is not None else parse_size(DEFAULT_BUDGET)
    if use_ray:
        import weightdb.ray as weightdb_ray  # Ray loads only when asked for

        weightdb_ray.connect_cluster()
        dataset = weightdb_ray.read_parquet(input_table)
        result = weightdb_ray.to_table(
            weightdb_ray.predict(
                dataset,
                path,
                features=features,
                model=model,
                model_column=model_column,
                actors=actors,
                budget=pool_bytes,
            )
        )
    else:
        result = predict_table(
            path, read_parquet(input_table), features, model, model_column, pool_bytes
        )
    pq.write_table(result, output)
    where = f"{actors} Ray actor{'s' if actors > 1 else ''}" if use_ray else "this process"
    console.print(f"predicted {result.num_rows} rows in {where}; wrote {output}")
