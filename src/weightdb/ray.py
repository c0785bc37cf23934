"""Batch inference on Ray: ``weightdb.ray.predict(dataset, db_path, ...)`` -> Ray Dataset.

The database directory is the shared storage (a shared filesystem on a real cluster); every
actor opens it once, with a buffer pool of its own byte budget that stays warm across batches.
Rows are routed to actors by model: ``weightdb.scaleout.placement`` puts models that share
pages on the same actor (a hot model on several), so a shared page is read once per actor that
needs it; ``routing="round-robin"`` instead deals every model's rows to all actors in turn (the
baseline). Each actor runs the same batch function as the local ``predict_table``, so results
are bit-identical to ``db.predict`` and come back in input order. A ``PoolStatsCollector``
gathers each actor's buffer-pool counters (bytes read from storage, hits, misses, rows).

``serve`` runs the KServe v2 API on Ray Serve (``weightdb.scaleout.serve``): replicas with a
byte budget each, behind a router by sharing group.

``import weightdb`` never imports Ray; this module and ``weightdb.scaleout.serve`` do.
"""

import uuid
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
import ray.serve

from weightdb.database import DEFAULT_BUDGET
from weightdb.errors import WeightDBError
from weightdb.scaleout.placement import Placement, place_models, round_robin
from weightdb.scaleout.serve import ReplicaOptions, application
from weightdb.scaleout.table_predict import (
    PREDICTION,
    check_model_choice,
    model_pages,
    open_reader,
    predict_batch,
)
from weightdb.server.config import ServerConfig

ROW = "__weightdb_row"
BATCH_ROWS = 1024
Routing = Literal["affinity", "round-robin"]
ROUTINGS: tuple[Routing, ...] = ("affinity", "round-robin")
POOL_COUNTERS = ("rows", "bytes_read", "hits", "misses")


@ray.remote(num_cpus=0)
class _PoolCounters:
    """Every actor's latest cumulative counters, by actor number and actor instance (an actor
    that Ray restarts starts a fresh pool, so its instances add up)."""

    def __init__(self) -> None:
        self.latest: dict[tuple[int, str], dict[str, int]] = {}

    def report(self, actor: int, instance: str, counters: dict[str, int]) -> None:
        self.latest[(actor, instance)] = counters

    def per_actor(self) -> dict[int, dict[str, int]]:
        totals: dict[int, dict[str, int]] = {}
        for (actor, _), counters in sorted(self.latest.items()):
            total = totals.setdefault(actor, dict.fromkeys(POOL_COUNTERS, 0))
            for key in POOL_COUNTERS:
                total[key] += counters[key]
        return totals


class PoolStatsCollector:
    """Pass one to ``predict(..., pool_stats=...)``; once the job has run, ``per_actor()`` gives
    each actor's rows and buffer-pool counters: what routing changes, measured."""

    def __init__(self) -> None:
        self.handle = _PoolCounters.remote()

    def per_actor(self) -> dict[int, dict[str, int]]:
        """Actor number -> rows predicted, bytes read from storage, page hits and misses."""
        return ray.get(self.handle.per_actor.remote())


def predict(
    dataset: ray.data.Dataset,
    db_path: str | Path,
    *,
    features: str,
    model: str | None = None,
    model_column: str | None = None,
    actors: int = 1,
    budget: int | str | None = DEFAULT_BUDGET,
    batch_rows: int = BATCH_ROWS,
    routing: Routing = "affinity",
    pool_stats: PoolStatsCollector | None = None,
) -> ray.data.Dataset:
    """``dataset`` with a ``prediction`` column (the model's first output as float32 lists),
    in input order; every row runs ``model`` or the model its ``model_column`` names, on one
    of ``actors`` actors, each with a buffer pool of ``budget`` bytes. Rows go to actors by
    sharing group (``routing="affinity"``) or every model's rows to all actors in turn
    (``"round-robin"``); ``pool_stats`` collects what each actor read."""
    check_model_choice(model, model_column)
    if actors < 1:
        raise WeightDBError(f"actors must be at least 1, got {actors}")
    if routing not in ROUTINGS:
        raise WeightDBError(f"unknown routing {routing!r}; choose one of {', '.join(ROUTINGS)}")
    db_path = Path(db_path).resolve()
    with warnings.catch_warnings():  # zip is deprecated after 2.60; positional is what we need
        warnings.simplefilter("ignore", DeprecationWarning)
        row_numbers = ray.data.range(dataset.count()).rename_columns({"id": ROW})
        indexed = dataset.zip(row_numbers).materialize()  # read once: counted, then routed
    columns = [name for name in indexed.schema().names if name != ROW]
    for column in (features, model_column):
        if column is not None and column not in columns:
            raise WeightDBError(f"the dataset has no column {column!r}; its columns are {columns}")
    if PREDICTION in columns:
        raise WeightDBError(f"the dataset already has column {PREDICTION!r}; rename it first")
    placement = _placement(indexed, db_path, model, model_column, actors, routing)
    used = sorted({w for replicas in placement.replicas.values() for w in replicas}) or [0]
    split = _split.options(num_returns=len(used))
    shares = [  # per input block, its rows for each used actor
        split.remote(block, placement, used, model, model_column)
        for block in indexed.to_arrow_refs()
    ]
    if len(used) == 1:
        shares = [[share] for share in shares]
    actor_args = {
        "db_path": db_path,
        "budget": budget,
        "features": features,
        "model": model,
        "model_column": model_column,
        "counters": pool_stats and pool_stats.handle,
    }
    parts = [
        ray.data.from_arrow_refs([block[number] for block in shares]).map_batches(
            _PredictActor,
            fn_constructor_kwargs={**actor_args, "number": used[number]},
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=1,
            batch_size=batch_rows,
            batch_format="pyarrow",
        )
        for number in range(len(used))
    ]
    joined = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]  # union() needs one
    return joined.sort(ROW).drop_columns([ROW])


def _placement(
    indexed: ray.data.Dataset,
    db_path: Path,
    model: str | None,
    model_column: str | None,
    actors: int,
    routing: Routing,
) -> Placement:
    """Sharing groups over the models the rows ask for, weighted by their row counts (or, for
    round-robin, every model on every actor)."""
    if model is not None:
        load = {model: 1.0}
    else:
        load = {}
        for batch in indexed.select_columns([model_column]).iter_batches(batch_format="pyarrow"):
            for entry in pc.value_counts(batch[model_column]).to_pylist():
                load[entry["values"]] = load.get(entry["values"], 0.0) + entry["counts"]
        if None in load:
            raise WeightDBError(f"column {model_column!r} has empty model names; fill them in")
    if routing == "round-robin":
        return round_robin(load, actors)
    with open_reader(db_path) as db:
        pages = model_pages(db, sorted(load))
    return place_models(pages, load, actors)


@ray.remote
def _split(
    block: pa.Table,
    placement: Placement,
    used: list[int],
    model: str | None,
    model_column: str | None,
) -> pa.Table | list[pa.Table]:
    """A block's rows for each used actor (one table when there is one): each model's replicas
    in turn by row number. Plain tasks, submitted before the actors take the CPUs."""
    rows = block[ROW].to_numpy()
    names = (
        np.full(len(rows), model, dtype=object)
        if model is not None
        else block[model_column].to_numpy(zero_copy_only=False)
    )
    workers = np.zeros(len(rows), dtype=np.int64)
    for name in np.unique(names):
        members = names == name
        replicas = np.array(placement.replicas[name])
        workers[members] = replicas[rows[members] % len(replicas)]
    shares = [block.filter(pa.array(workers == worker)) for worker in used]
    return shares if len(used) > 1 else shares[0]


class _PredictActor:
    """One actor: the database opened once, its buffer pool warm across batches; with
    ``counters``, it reports its pool's counters after every batch (waiting for the report, so
    none is lost when the job ends)."""

    def __init__(
        self,
        db_path: Path,
        budget: int | str | None,
        features: str,
        model: str | None,
        model_column: str | None,
        counters: ray.actor.ActorHandle | None,
        number: int,
    ) -> None:
        self.db = open_reader(db_path, budget)
        self.features = features
        self.model = model
        self.model_column = model_column
        self.counters = counters
        self.number = number
        self.instance = uuid.uuid4().hex
        self.rows = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        result = predict_batch(self.db, batch, self.features, self.model, self.model_column)
        self.rows += batch.num_rows
        if self.counters is not None:
            stats = self.db.pool.stats()
            counters = {"rows": self.rows, "bytes_read": stats.bytes_read}
            counters |= {"hits": stats.hits, "misses": stats.misses}
            ray.get(self.counters.report.remote(self.number, self.instance, counters))
        return result


def to_table(dataset: ray.data.Dataset) -> pa.Table:
    """Collect a (small enough) dataset into one Arrow table in the driver, in order."""
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def connect_cluster() -> None:
    """Join the cluster ``RAY_ADDRESS`` names, else start a local one (once per process)."""
    if not ray.is_initialized():
        ray.init()


def read_parquet(path: Path) -> ray.data.Dataset:
    """A Parquet file or folder as a dataset whose blocks keep the file's row order."""
    if not path.exists():
        raise WeightDBError(f"input table {path} does not exist")
    dataset = ray.data.read_parquet(str(path))
    dataset.context.execution_options.preserve_order = True
    return dataset


SERVE_APP = "weightdb"


def serve(
    db_path: str | Path,
    *,
    replicas: int = 1,
    budget: int | str | None = DEFAULT_BUDGET,
    policy: str | None = None,
    batch_invariant: bool = True,
    config: ServerConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    replica_cpus: float = 1.0,
) -> str:
    """Serve ``db_path`` over KServe v2 REST on Ray Serve and return its URL; it runs until
    ``ray.serve.shutdown()``. Each of ``replicas`` replicas opens the database read-only with a
    buffer pool of ``budget`` bytes and reserves ``replica_cpus`` CPUs."""
    if replicas < 1:
        raise WeightDBError(f"replicas must be at least 1, got {replicas}")
    options = ReplicaOptions(
        Path(db_path).resolve(), budget, policy, batch_invariant, config or ServerConfig()
    )
    ray.serve.start(http_options={"host": host, "port": port})
    ray.serve.run(
        application(options, replicas, replica_cpus),
        name=SERVE_APP,
        route_prefix="/",
        logging_config={"log_level": "WARNING"},  # as quiet as `weightdb serve`
    )
    return f"http://{host}:{port}"
