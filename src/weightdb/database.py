"""The Python API: ``connect`` and ``Database``, a thin facade over the storage engine.

Import and export logic live in ``weightdb.ingest``, storage in ``weightdb.storage`` (the
``Store``), prediction in ``weightdb.engine``; this module only ties them to one object.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa

from weightdb import dedup
from weightdb.caching.recorder import TraceRecorder
from weightdb.dedup import DedupReport
from weightdb.dedup.evalspec import EvalSpec
from weightdb.engine import (
    InputSpec,
    InvalidInputError,
    UnsupportedModelError,
    unsupported_ops,
)
from weightdb.engine.prepared_models import PreparedModels
from weightdb.engine.row_independence import RowIndependence, row_independence
from weightdb.ingest import exporter, torch_export
from weightdb.ingest.importer import import_source
from weightdb.ingest.npz_format import from_arrays
from weightdb.ingest.open_source import open_source
from weightdb.ingest.source import ModelSource
from weightdb.names import check_model_name
from weightdb.packing import DEFAULT_ALGORITHM, DEFAULT_TIME_LIMIT
from weightdb.progress import Progress
from weightdb.sql.session import SQLSession
from weightdb.storage import reclaim
from weightdb.storage.buffer_pool import BufferPool, PoolStats
from weightdb.storage.catalog import ModelInfo
from weightdb.storage.compress import CompressReport, compress
from weightdb.storage.repack import RepackReport, repack
from weightdb.storage.settings import Settings
from weightdb.storage.store import Store
from weightdb.storage.stored_tensor import StoredTensor
from weightdb.storage.verify import verify_database
from weightdb.units import parse_size


@dataclass(frozen=True)
class ImportedModel(ModelInfo):
    new_block_bytes: int = field(kw_only=True)
    """Bytes of the blocks this import stored: blocks already stored (by any model, including
    one another writer committed while this import waited for the lock) are not counted."""


class Database:
    """Open with ``weightdb.connect(path)``; use as a context manager or call ``close()``.

    A thin facade: storage lives in ``store`` (``weightdb.storage.store.Store``), compiled
    models in the engine's cache, SQL in a DuckDB session opened on first use."""

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        settings: Settings | None = None,
        budget_bytes: int | None = None,
        policy: str | None = None,
        batch_invariant: bool = True,
        read_only: bool = False,
    ) -> None:
        self.store = Store(
            Path(path),
            create=create,
            settings=settings,
            budget_bytes=budget_bytes,
            policy=policy,
            read_only=read_only,
        )
        self.batch_invariant = batch_invariant
        self.prepared = PreparedModels(self.store, batch_invariant)
        self._sql_session: SQLSession | None = None

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def settings(self) -> Settings:
        return self.store.settings

    @property
    def pool(self) -> BufferPool:
        """The buffer pool every read of weights goes through."""
        return self.store.pool

    # -- the Python API -----------------------------------------------------------------

    def refresh(self) -> None:
        """Read-only databases: see what writers committed since opening (or the last
        refresh). Elsewhere every query already sees the latest commit."""
        self.store.refresh()

    def import_model(
        self,
        source: str | Path,
        name: str,
        *,
        progress: Progress | None = None,
        parent: str | None = None,
        lossless: bool | None = None,
        graph: str | Path | None = None,
    ) -> ImportedModel:
        """Import a .safetensors, .npz, .onnx, .pt/.pth/.bin file or a Hugging Face folder.

        ``graph`` is the ONNX file whose graph runs these weights (its initializers matched
        by name, shape and dtype); a BERT-style Hugging Face folder gets one built when
        ``transformers`` is installed. The result's ``cannot_predict_because`` says why a
        model has none. ``parent`` names the stored model this one descends from; ``lossless``
        (default: the database's setting) codes new blocks, against the parent's (found if
        not given)."""
        check_model_name(name)
        coded = self.settings.lossless if lossless is None else lossless
        with open_source(Path(source), None if graph is None else Path(graph)) as opened:
            if opened.graph is not None:
                check_graph(opened, Path(source))
            new_bytes = import_source(self.store, opened, name, progress, parent, coded)
        return ImportedModel(*astuple(self.model(name)), new_block_bytes=new_bytes)

    def from_torch(
        self,
        module,
        example_inputs: tuple,
        *,
        name: str,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
    ) -> ImportedModel:
        """Import a PyTorch module: exported to ONNX (batch dimension free), then imported."""
        check_model_name(name)
        names = {"input_names": input_names, "output_names": output_names}
        with torch_export.exported(module, example_inputs, **names) as folder:
            return self.import_model(Path(folder) / "model.onnx", name)

    def import_arrays(
        self,
        name: str,
        arrays: Mapping[str, np.ndarray],
        *,
        parent: str | None = None,
        lossless: bool | None = None,
    ) -> ImportedModel:
        """Import in-memory numpy arrays as a model (no graph); see ``import_model``."""
        check_model_name(name)
        coded = self.settings.lossless if lossless is None else lossless
        with from_arrays(arrays) as opened:
            new_bytes = import_source(self.store, opened, name, None, parent, coded)
        return ImportedModel(*astuple(self.model(name)), new_block_bytes=new_bytes)

    def export_model(
        self, name: str, path: str | Path, *, progress: Progress | None = None
    ) -> Path:
        """Write a model to ``.safetensors``, ``.npz`` or (if it has a graph) ``.onnx``."""
        return exporter.export_model(self.store, name, Path(path), progress)

    def pack(
        self,
        algorithm: str = DEFAULT_ALGORITHM,
        frequencies: dict[str, float] | None = None,
        *,
        time_limit: float = DEFAULT_TIME_LIMIT,
        progress: Progress | None = None,
        force: bool = False,
    ) -> RepackReport:
        """Rewrite all pages in the layout of a packing algorithm, so each model reads few
        pages (shared blocks may be stored on several); atomic, and in-flight reads finish on
        the old pages. Keeps the current layout unless the new one is better (or ``force``)."""
        return repack(
            self.store,
            algorithm,
            frequencies,
            time_limit=time_limit,
            progress=progress,
            force=force,
        )

    def deduplicate(
        self,
        models: list[str] | None = None,
        eval_spec: EvalSpec = None,
        max_drop: float | Mapping[str, float] = 0.01,
        **options,
    ) -> DedupReport:
        """Deduplicate ``models`` (default: all), exactly and, where ``eval_spec`` says how to
        measure a model, approximately within ``max_drop``; commit once. ``options``: the
        ``method``, a ``progress`` callback and the method's parameters (see
        ``weightdb.dedup.api.deduplicate``)."""
        return dedup.deduplicate(self.store, models, eval_spec, max_drop, **options)

    def compress(self, lossless: bool = True, progress: Progress | None = None) -> CompressReport:
        """Code every stored block with the lossless tier (or, ``lossless=False``, store every
        block raw again); atomic like ``pack``, and exports stay bit-identical."""
        return compress(self.store, lossless, progress)

    def parent(self, name: str) -> str | None:
        """The model ``name`` descends from (given or found at import or compress), if any."""
        catalog = self.store.catalog
        return catalog.parent_name(catalog.model_id(name))

    def remove_model(self, name: str) -> None:
        """Drop a model; blocks no other model uses are freed, and pages left empty reclaimed."""
        reclaim.remove_model(self.store, name)

    def predict(
        self, name: str, inputs: Mapping[str, np.ndarray] | np.ndarray
    ) -> dict[str, np.ndarray]:
        """Run a model on ``inputs`` (graph input name -> array, or one array for a model with
        one input); every weight block is read through the buffer pool. Returns graph output
        name -> array."""
        prepared = self.prepared.get(name)
        if not isinstance(inputs, Mapping):
            inputs = _named_input(name, [spec.name for spec in prepared.inputs], inputs)
        return prepared.run(inputs)

    @contextmanager
    def record_trace(self, path: str | Path) -> Iterator[TraceRecorder]:
        """Record every page request made inside the ``with`` block (each run of a model, by
        ``predict``, SQL or the server, is one query) and write them to ``path`` in the trace
        format of ``weightdb cache``."""
        recorder = TraceRecorder()
        self.pool.recorder = recorder
        try:
            yield recorder
        finally:
            self.pool.recorder = None
            recorder.write(Path(path), self.store.locate_page, self.store.catalog.page_models)

    def inputs(self, name: str) -> list[InputSpec]:
        """The graph inputs a model expects: names, dtypes and dims (None or a name if free)."""
        return self.prepared.get(name).inputs

    def sql(self, query: str, parameters: list | None = None) -> pa.Table:
        """Run SQL in DuckDB over the database's feature tables (``features.duckdb``), with
        ``predict``, ``predict_label``, ``embed`` and the ``weightdb.models``, ``.tensors``,
        ``.pages`` and ``.cache`` tables. ``?`` placeholders take ``parameters``."""
        return self._sql().query(query, parameters)

    def load_table(self, name: str, data: pa.Table) -> None:
        """Store an Arrow table (e.g. features and labels) as a DuckDB table for ``sql``."""
        self._sql().load_table(name, data)

    def _sql(self) -> SQLSession:
        if self._sql_session is None:
            self._sql_session = SQLSession(self)
        return self._sql_session

    def models(self) -> list[ModelInfo]:
        return self.store.catalog.model_infos()

    def model(self, name: str) -> ModelInfo:
        catalog = self.store.catalog
        (info,) = catalog.model_infos(catalog.model_id(name))
        return info

    def graph(self, name: str) -> onnx.ModelProto | None:
        """The model's ONNX graph without its stored initializers; None for weights only."""
        return self.store.graph(name)

    def row_independence(self, name: str) -> RowIndependence:
        """Whether the server may stack concurrent requests for the model into one batch: only
        when its graph provably keeps rows apart (read from the graph, without compiling it)."""
        model = self.graph(name)
        if model is None:
            return RowIndependence(False, "the model is stored without a graph")
        return row_independence(model, {n: t.shape for n, t in self.tensors(name).items()})

    def tensors(self, name: str) -> dict[str, StoredTensor]:
        """The stored tensors of a model, in source order, readable block by block, once the
        rows that map them are checked against their digests."""
        return self.store.tensors(name)

    def stats(self) -> dict:
        """Counts and bytes; the keys of ``weightdb stats --json``."""
        catalog = self.store.catalog
        counts = catalog.counts()
        files = self.store.page_files()
        tiers = catalog.savings_by_tier()
        stored = tiers["stored_bytes"]  # after exact, lossless and approximate
        return {
            "models": counts["models"],
            "tensors": counts["tensors"],
            "logical_bytes": counts["logical_bytes"],
            "stored_bytes": stored,
            "distinct_blocks": counts["distinct_blocks"],
            "block_references": counts["block_references"],
            "dedup_ratio": counts["logical_bytes"] / stored if stored else 1.0,
            "saved_bytes_by_tier": {
                "exact": tiers["exact_saved_bytes"],
                "lossless": tiers["lossless_saved_bytes"],
                "approximate": tiers["approximate_saved_bytes"],
            },
            "replaced_block_positions": tiers["replaced_positions"],
            "pages": catalog.page_count(),
            "page_bytes": catalog.page_bytes(),
            "page_files": len(files),
            "page_file_bytes": sum(f.stat().st_size for f in files),
            "block_shape": list(self.settings.block_shape),
            "page_size": self.settings.page_size,
            "pages_read_per_model": catalog.pages_read(),
            "buffer_pool": pool_stats_dict(self.pool.stats()),
        }

    def verify(self, progress: Progress | None = None) -> int:
        """Check the catalog file, every model's rows against their digests, and every page's
        checksum, directory and block digests; raise naming the damage. Returns pages checked."""
        return verify_database(self.store, progress)

    def close(self) -> None:
        """Release what the database holds: compiled models, cached pages, files, SQL."""
        self.prepared.clear()
        if self._sql_session is not None:
            self._sql_session.close()
        self.store.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_graph(opened: ModelSource, source: Path) -> None:
    """Refuse, at import, a graph the engine could not run, listing every offending op; a
    graph weightdb built itself is dropped instead, saying why, and the weights imported."""
    model = onnx.ModelProto()
    model.ParseFromString(opened.graph)
    problems = unsupported_ops(model)
    if problems and "graph_built_by" in opened.metadata:
        opened.drop_graph(f"its graph uses ops weightdb cannot run: {', '.join(problems)}")
    elif problems:
        raise UnsupportedModelError(
            f"{source} uses ops weightdb cannot run: {', '.join(problems)}; nothing was imported"
        )


def _named_input(model: str, names: list[str], array: np.ndarray) -> dict[str, np.ndarray]:
    """A bare array as the inputs of a model with one input; otherwise say what to pass."""
    if len(names) != 1:
        example = ", ".join(f"{n!r}: ..." for n in names)
        raise InvalidInputError(
            f"model {model!r} has {len(names)} inputs {names}, so one array cannot say which it "
            f"is; pass a dict of input name -> array: {{{example}}}"
        )
    return {names[0]: array}


def pool_stats_dict(stats: PoolStats) -> dict:
    return {**vars(stats), "hit_ratio": stats.hit_ratio}


DEFAULT_BUDGET = "1GiB"


def connect(
    path: str | Path,
    *,
    create: bool = True,
    settings: Settings | None = None,
    budget: int | str | None = DEFAULT_BUDGET,
    policy: str | None = None,
    batch_invariant: bool = True,
    read_only: bool = False,
) -> Database:
    """Open the database at ``path``, creating it (with ``settings``) if it does not exist.

    ``budget`` bounds the buffer pool (bytes or a size such as ``"256MiB"``; None for no
    bound): every read of weights, including export and prediction, goes through it.
    ``policy`` overrides the database's replacement policy for this connection.
    ``batch_invariant=False`` lets a row's last bits depend on the batch it is predicted in,
    for speed at small batches (see ``weightdb.engine.gemm``). ``read_only`` opens an
    existing database on a consistent snapshot while other processes write to it; ``refresh``
    moves the snapshot forward.
    """
    budget_bytes = None if budget is None else parse_size(budget)
    return Database(
        path,
        create=create,
        settings=settings,
        budget_bytes=budget_bytes,
        policy=policy,
        batch_invariant=batch_invariant,
        read_only=read_only,
    )
