"""A weightdb database: one directory with ``catalog.sqlite``, ``pages/`` and ``config.toml``.

``Database`` ties the storage layer together (catalog, page files, buffer pool, writer lock)
and is the Python API. Import and export logic live in ``weightdb.ingest``; this module
decides where things are and keeps the invariants: writers hold the writer lock, every change
commits in one catalog transaction, and files no committed row refers to are removed.
"""

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa

from weightdb.caching.recorder import TraceRecorder
from weightdb.engine import InputSpec, UnsupportedModelError, unsupported_ops
from weightdb.engine.row_independence import RowIndependence, row_independence
from weightdb.errors import DatabaseNotFoundError, ModelNotFoundError, WeightDBError
from weightdb.ingest import exporter, torch_export
from weightdb.ingest.importer import import_source
from weightdb.ingest.npz_format import from_arrays
from weightdb.ingest.open_source import open_source
from weightdb.names import check_model_name
from weightdb.packing import DEFAULT_ALGORITHM, DEFAULT_TIME_LIMIT
from weightdb.progress import Progress
from weightdb.serving.prepared_models import PreparedModels
from weightdb.sql.session import SQLSession
from weightdb.storage import catalog_digest, dtypes, reclaim
from weightdb.storage.blocking import BlockLayout, layout_for
from weightdb.storage.buffer_pool import BufferPool, PoolStats
from weightdb.storage.catalog import Catalog
from weightdb.storage.compress import CompressReport, compress
from weightdb.storage.page_files import PageLocation, PageReader, segment_number
from weightdb.storage.page_format import DATA_START
from weightdb.storage.policies import make_policy
from weightdb.storage.repack import RepackReport, pages_read, repack
from weightdb.storage.savings import savings_by_tier
from weightdb.storage.settings import Settings, read_settings, write_settings
from weightdb.storage.stored_tensor import StoredTensor
from weightdb.storage.verify import verify_database
from weightdb.storage.writer_lock import WriterLock
from weightdb.units import parse_size

RETIRED_GRACE_SECONDS = 600.0
"""How long retired pages stay readable: longer than any request may run."""

CATALOG = "catalog.sqlite"
PAGES = "pages"
CONFIG = "config.toml"
LOCK = "writer.lock"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    format: str
    tensors: int
    logical_bytes: int
    has_graph: bool
    source_digest: str
    created_at: str
    parent: str | None = None


@dataclass(frozen=True)
class ImportedModel(ModelInfo):
    new_block_bytes: int = field(kw_only=True)
    """Bytes of the blocks this import stored: blocks already stored (by any model, including
    one another writer committed while this import waited for the lock) are not counted."""


class Database:
    """Open with ``weightdb.connect(path)``; use as a context manager or call ``close()``."""

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        settings: Settings | None = None,
        budget_bytes: int | None = None,
        policy: str | None = None,
        batch_invariant: bool = True,
    ) -> None:
        self.path = Path(path)
        self.batch_invariant = batch_invariant
        config = self.path / CONFIG
        if not config.is_file():
            if not create:
                raise DatabaseNotFoundError(
                    f"no weightdb database at {self.path}; create one with "
                    f"`weightdb init {self.path}`"
                )
            self._create(settings or Settings())
        elif settings is not None and read_settings(config) != settings.validate():
            raise WeightDBError(
                f"{self.path} already exists with different settings; settings are fixed "
                "when a database is created"
            )
        self.settings = read_settings(config)
        self.pages_dir = self.path / PAGES
        self.catalog = Catalog(self.path / CATALOG, create=False)
        self.writer_lock = WriterLock(self.path / LOCK)
        self._locations: dict[int, PageLocation] = {}
        self._locations_lock = threading.Lock()
        self.reader = PageReader(self.pages_dir)
        self.pool = BufferPool(
            self.reader,
            self.locate_page,
            budget_bytes,
            make_policy(policy or self.settings.policy, self.page_models),
            self.locate_blocks,
            DATA_START + self.settings.page_size,
        )
        self.prepared = PreparedModels(self)
        self._sql_session: SQLSession | None = None

    def _create(self, settings: Settings) -> None:
        settings.validate()
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise WeightDBError(
                f"{self.path} exists and is not an empty directory; choose a new path for the "
                "database"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / PAGES).mkdir(exist_ok=True)
        Catalog(self.path / CATALOG, create=True).close()
        # config.toml last: its presence is what marks a complete database.
        tmp = self.path / (CONFIG + ".tmp")
        write_settings(tmp, settings)
        tmp.replace(self.path / CONFIG)

    # -- storage plumbing ---------------------------------------------------------------

    def locate_page(self, page_id: int) -> PageLocation:
        with self._locations_lock:
            location = self._locations.get(page_id)
        if location is None:
            row = self.catalog.conn.execute(
                "SELECT page_id, file, offset, length, checksum FROM pages WHERE page_id = ? "
                "UNION ALL SELECT page_id, file, offset, length, checksum FROM retired_pages "
                "WHERE page_id = ?",
                (page_id, page_id),
            ).fetchone()
            if row is None:
                raise WeightDBError(f"page {page_id} is not in the catalog")
            location = PageLocation(*row)
            with self._locations_lock:
                self._locations[page_id] = location
        return location

    def locate_blocks(self, block_ids: list[int]) -> dict[int, tuple[int, int]]:
        """Blocks' own page and slot (where the bases of deltas are read)."""
        found = {}
        for start in range(0, len(block_ids), 500):  # under SQLite's parameter limit
            chunk = block_ids[start : start + 500]
            found |= {
                block_id: (page_id, slot)
                for block_id, page_id, slot in self.catalog.conn.execute(
                    "SELECT block_id, page_id, slot FROM blocks WHERE block_id IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                )
            }
        missing = set(block_ids) - found.keys()
        if missing:
            raise WeightDBError(
                f"blocks {sorted(missing)[:5]} are not in the catalog; the database is damaged"
            )
        return found

    def page_bytes(self) -> int:
        """The bytes of every live page: what a pool holding all of them needs."""
        return self.catalog.conn.execute("SELECT COALESCE(SUM(length), 0) FROM pages").fetchone()[0]

    def page_models(self, page_id: int) -> list[str]:
        """Names of the models that read a block from this page."""
        rows = self.catalog.conn.execute(
            "SELECT DISTINCT m.name FROM page_readers r JOIN models m USING (model_id) "
            "WHERE r.page_id = ? ORDER BY m.name",
            (page_id,),
        ).fetchall()
        return [name for (name,) in rows]

    def collect_garbage(self) -> list[str]:
        """Delete page files no page refers to: left by a crashed writer, or holding only
        pages retired longer than ``RETIRED_GRACE_SECONDS`` ago.

        Callers hold the writer lock, so no write in progress can own such a file.
        """
        with self.catalog.transaction() as conn:
            conn.execute(
                "DELETE FROM retired_pages WHERE retired_at < ?",
                (time.time() - RETIRED_GRACE_SECONDS,),
            )
        referenced = {
            f
            for (f,) in self.catalog.conn.execute(
                "SELECT file FROM pages UNION SELECT file FROM retired_pages"
            )
        }
        removed = []
        for file in self.pages_dir.iterdir():
            if segment_number(file.name) is not None and file.name not in referenced:
                self.reader.forget(file.name)
                file.unlink()
                removed.append(file.name)
        return removed

    def next_ids(self) -> tuple[int, int, int]:
        """Next block id, page id and segment number; valid while the writer lock is held."""
        conn = self.catalog.conn
        block = conn.execute("SELECT COALESCE(MAX(block_id), 0) + 1 FROM blocks").fetchone()[0]
        page = conn.execute(
            "SELECT MAX(p) + 1 FROM (SELECT COALESCE(MAX(page_id), 0) AS p FROM pages "
            "UNION ALL SELECT COALESCE(MAX(page_id), 0) FROM retired_pages)"
        ).fetchone()[0]
        numbers = [segment_number(f.name) for f in self.pages_dir.iterdir()]
        segment = max([n for n in numbers if n is not None], default=0) + 1
        return block, page, segment

    def layout_generation(self) -> int:
        """A number that changes whenever a commit moves blocks to other pages."""
        return int(self.catalog.get_meta("layout_generation", "0"))

    def model_id(self, name: str) -> int:
        row = self.catalog.conn.execute(
            "SELECT model_id FROM models WHERE name = ?", (check_model_name(name),)
        ).fetchone()
        if row is None:
            known = [n for (n,) in self.catalog.conn.execute("SELECT name FROM models LIMIT 20")]
            hint = f"; stored models: {', '.join(known)}" if known else "; the database is empty"
            raise ModelNotFoundError(f"no model named {name!r}{hint}")
        return row[0]

    # -- the Python API -----------------------------------------------------------------

    def import_model(
        self,
        source: str | Path,
        name: str,
        *,
        progress: Progress | None = None,
        parent: str | None = None,
        lossless: bool | None = None,
    ) -> ImportedModel:
        """Import a .safetensors, .npz, .onnx, .pt/.pth/.bin file or a Hugging Face folder.

        ``parent`` names the stored model this one descends from; ``lossless`` (default: the
        database's setting) codes new blocks, against the parent's (found if not given)."""
        check_model_name(name)
        coded = self.settings.lossless if lossless is None else lossless
        with open_source(Path(source)) as opened:
            if opened.graph is not None:
                check_graph(opened.graph, Path(source))
            new_bytes = import_source(self, opened, name, progress, parent, coded)
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
            new_bytes = import_source(self, opened, name, None, parent, coded)
        return ImportedModel(*astuple(self.model(name)), new_block_bytes=new_bytes)

    def export_model(
        self, name: str, path: str | Path, *, progress: Progress | None = None
    ) -> Path:
        """Write a model to ``.safetensors``, ``.npz`` or (if it has a graph) ``.onnx``."""
        return exporter.export_model(self, name, Path(path), progress)

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
            self, algorithm, frequencies, time_limit=time_limit, progress=progress, force=force
        )

    def compress(self, lossless: bool = True, progress: Progress | None = None) -> CompressReport:
        """Code every stored block with the lossless tier (or, ``lossless=False``, store every
        block raw again); atomic like ``pack``, and exports stay bit-identical."""
        return compress(self, lossless, progress)

    def parent(self, name: str) -> str | None:
        """The model ``name`` descends from (given or found at import or compress), if any."""
        row = self.catalog.conn.execute(
            "SELECT p.name FROM lineage l JOIN models p ON p.model_id = l.parent_id "
            "WHERE l.model_id = ?",
            (self.model_id(name),),
        ).fetchone()
        return row[0] if row else None

    def remove_model(self, name: str) -> None:
        """Drop a model; blocks no other model uses are freed, and pages left empty reclaimed."""
        reclaim.remove_model(self, name)

    def predict(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a model on ``inputs`` (graph input name -> array); every weight block is read
        through the buffer pool. Returns graph output name -> array."""
        return self.prepared.get(name).run(inputs)

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
            recorder.write(Path(path), self.locate_page, self.page_models)

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
        return self._model_infos("", ())

    def model(self, name: str) -> ModelInfo:
        (info,) = self._model_infos("WHERE m.model_id = ?", (self.model_id(name),))
        return info

    def _model_infos(self, where: str, parameters: tuple) -> list[ModelInfo]:
        rows = self.catalog.conn.execute(
            "SELECT m.name, m.format, COUNT(t.tensor_id), COALESCE(SUM(t.nbytes), 0), "
            "m.graph IS NOT NULL, m.source_digest, m.created_at, "
            "(SELECT p.name FROM lineage l JOIN models p ON p.model_id = l.parent_id "
            "WHERE l.model_id = m.model_id) "
            f"FROM models m LEFT JOIN tensors t USING (model_id) {where} "
            "GROUP BY m.model_id ORDER BY m.name",
            parameters,
        ).fetchall()
        return [ModelInfo(*row[:4], bool(row[4]), *row[5:]) for row in rows]

    def graph(self, name: str) -> onnx.ModelProto | None:
        """The model's ONNX graph without its stored initializers; None for weights only."""
        model_id = self.model_id(name)
        catalog_digest.check_model(self.catalog.conn, model_id)
        (graph,) = self.catalog.conn.execute(
            "SELECT graph FROM models WHERE model_id = ?", (model_id,)
        ).fetchone()
        if graph is None:
            return None
        model = onnx.ModelProto()
        model.ParseFromString(graph)
        return model

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
        model_id = self.model_id(name)
        conn = self.catalog.conn
        catalog_digest.check_tensors(conn, model_id)
        blocks: dict[int, list[tuple[int, int, int, int]]] = {}
        for tensor_id, *position in conn.execute(
            "SELECT tensor_id, block_row, block_col, page_id, slot FROM block_reads "
            "WHERE model_id = ?",
            (model_id,),
        ):
            blocks.setdefault(tensor_id, []).append(position)
        result: dict[str, StoredTensor] = {}
        for tensor_id, tname, dtype, shape, block_rows, block_cols in conn.execute(
            "SELECT tensor_id, name, dtype, shape, block_rows, block_cols FROM tensors "
            "WHERE model_id = ? ORDER BY position",
            (model_id,),
        ).fetchall():
            layout = BlockLayout(tuple(json.loads(shape)), block_rows, block_cols)
            if layout.num_blocks == 0:  # stored by a build that gave empty tensors a tall grid
                layout = layout_for(layout.shape, self.settings.block_shape)
            locations = np.zeros((*layout.grid, 2), dtype=np.int64)
            for i, j, page_id, slot in blocks.get(tensor_id, ()):
                locations[i, j] = (page_id, slot)
            result[tname] = StoredTensor(
                tname, dtypes.by_name(dtype).numpy, layout.shape, layout, locations, self.pool, name
            )
        return result

    def stats(self) -> dict:
        """Counts and bytes; the keys of ``weightdb stats --json``."""
        conn = self.catalog.conn
        models = conn.execute("SELECT COUNT(*) FROM models").fetchone()[0]
        tensors, logical = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM tensors"
        ).fetchone()
        blocks, refs = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(refs), 0) FROM blocks"
        ).fetchone()
        (pages,) = conn.execute("SELECT COUNT(*) FROM pages").fetchone()
        page_bytes = self.page_bytes()
        files = [f for f in self.pages_dir.iterdir() if segment_number(f.name) is not None]
        pool = self.pool.stats()
        tiers = savings_by_tier(conn)
        stored = tiers["stored_bytes"]  # after exact, lossless and approximate
        return {
            "models": models,
            "tensors": tensors,
            "logical_bytes": logical,
            "stored_bytes": stored,
            "distinct_blocks": blocks,
            "block_references": refs,
            "dedup_ratio": logical / stored if stored else 1.0,
            "saved_bytes_by_tier": {
                "exact": tiers["exact_saved_bytes"],
                "lossless": tiers["lossless_saved_bytes"],
                "approximate": tiers["approximate_saved_bytes"],
            },
            "replaced_block_positions": tiers["replaced_positions"],
            "pages": pages,
            "page_bytes": page_bytes,
            "page_files": len(files),
            "page_file_bytes": sum(f.stat().st_size for f in files),
            "block_shape": list(self.settings.block_shape),
            "page_size": self.settings.page_size,
            "pages_read_per_model": pages_read(conn),
            "buffer_pool": pool_stats_dict(pool),
        }

    def verify(self, progress: Progress | None = None) -> int:
        """Check the catalog file, every model's rows against their digests, and every page's
        checksum, directory and block digests; raise naming the damage. Returns pages checked."""
        return verify_database(self, progress)

    def close(self) -> None:
        """Release what the database holds: compiled models, cached pages, files, SQL."""
        self.prepared.clear()
        self.pool.clear()
        if self._sql_session is not None:
            self._sql_session.close()
        self.reader.close()
        self.catalog.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_graph(graph: bytes, source: Path) -> None:
    """Refuse, at import, a graph the engine could not run, listing every offending op."""
    model = onnx.ModelProto()
    model.ParseFromString(graph)
    problems = unsupported_ops(model)
    if problems:
        raise UnsupportedModelError(
            f"{source} uses ops weightdb cannot run: {', '.join(problems)}; nothing was imported"
        )


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
) -> Database:
    """Open the database at ``path``, creating it (with ``settings``) if it does not exist.

    ``budget`` bounds the buffer pool (bytes or a size such as ``"256MiB"``; None for no
    bound): every read of weights, including export and prediction, goes through it.
    ``policy`` overrides the database's replacement policy for this connection.
    ``batch_invariant=False`` lets a row's last bits depend on the batch it is predicted in,
    for speed at small batches (see ``weightdb.engine.gemm``).
    """
    budget_bytes = None if budget is None else parse_size(budget)
    return Database(
        path,
        create=create,
        settings=settings,
        budget_bytes=budget_bytes,
        policy=policy,
        batch_invariant=batch_invariant,
    )
