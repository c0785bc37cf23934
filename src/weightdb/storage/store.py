"""The storage engine: one database directory's catalog, page files, buffer pool and writer lock.

Everything below the ``Database`` facade (storage, ingest, dedup, the engine) receives a
``Store``. It decides where things are and keeps the invariants: writers hold the writer lock,
every change commits in one catalog transaction, and files no committed row refers to are
removed. A directory holds ``catalog.sqlite``, ``pages/`` and ``config.toml``.
"""

import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx

from weightdb.errors import DatabaseNotFoundError, ReadOnlyError, WeightDBError
from weightdb.storage import dtypes
from weightdb.storage.blocking import BlockLayout, layout_for
from weightdb.storage.buffer_pool import BufferPool
from weightdb.storage.catalog import Catalog
from weightdb.storage.catalog.leases import LEASE_SECONDS, new_reader_id
from weightdb.storage.page_files import PageLocation, PageReader, segment_number
from weightdb.storage.page_format import DATA_START
from weightdb.storage.policies import make_policy
from weightdb.storage.settings import Settings, read_settings, write_settings
from weightdb.storage.stored_tensor import StoredTensor
from weightdb.storage.writer_lock import WriterLock

RETIRED_GRACE_SECONDS = 600.0
MAX_CACHED_HOMES = 1 << 20  # block locations kept for decoding deltas (about 100 MB at most)
"""How long retired pages stay readable: longer than any request may run."""

CATALOG = "catalog.sqlite"
PAGES = "pages"
CONFIG = "config.toml"
LOCK = "writer.lock"


class Store:
    """Open (or, with ``create``, make) the database at ``path``; ``budget_bytes`` bounds the
    buffer pool (None: no bound) and ``policy`` overrides the database's replacement policy.

    ``read_only`` opens an existing database for reading only, on a consistent snapshot of its
    catalog that ``refresh`` moves forward; writers keep the pages that snapshot reads
    (``catalog/leases.py``), so other processes may import, pack or remove meanwhile."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        settings: Settings | None = None,
        budget_bytes: int | None = None,
        policy: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        config = self.path / CONFIG
        if not config.is_file():
            if not create or read_only:
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
        self._writer_lock = WriterLock(self.path / LOCK)
        self._locations: dict[int, PageLocation] = {}
        self._locations_lock = threading.Lock()
        self._homes: dict[int, tuple[int, int]] = {}
        self._homes_token: tuple[int, int] | None = None
        self._homes_lock = threading.Lock()
        self.reader = PageReader(self.pages_dir)
        self.pool = BufferPool(
            self.reader,
            self.locate_page,
            budget_bytes,
            make_policy(policy or self.settings.policy, self.catalog.page_models),
            self.block_homes,
            DATA_START + self.settings.page_size,
        )
        self._reader_id = new_reader_id() if read_only else None
        self._stop_renewing = threading.Event()
        if read_only:
            self.refresh()
            threading.Thread(target=self._renew_lease, daemon=True, name="weightdb-lease").start()

    @property
    def writer_lock(self) -> WriterLock:
        """Held by every write; refused on a read-only store."""
        if self.read_only:
            raise ReadOnlyError(
                f"{self.path} is open read-only; open it without read_only (the CLI: without "
                "--read-only) to import, remove, deduplicate, pack or compress"
            )
        return self._writer_lock

    def refresh(self) -> None:
        """Read-only stores: move the snapshot to the latest commit (new models, new layouts).
        Predictions already running finish on the pages they planned on."""
        if not self.read_only:
            return
        self.catalog.end_snapshot()
        self._snapshot_at = self.catalog.begin_snapshot()
        self.catalog.write_lease(self._reader_id, self._snapshot_at)

    def _renew_lease(self) -> None:
        while not self._stop_renewing.wait(LEASE_SECONDS / 3):
            self.catalog.write_lease(self._reader_id, self._snapshot_at)

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

    def locate_page(self, page_id: int) -> PageLocation:
        """Where a page is stored (cached: a page id is never reused for other bytes)."""
        with self._locations_lock:
            location = self._locations.get(page_id)
        if location is None:
            location = self.catalog.page_location(page_id)
            with self._locations_lock:
                self._locations[page_id] = location
        return location

    def block_homes(self, block_ids: list[int]) -> dict[int, tuple[int, int]]:
        """Blocks' own page and slot (the bases of deltas), cached until the catalog changes:
        decoding a page of deltas asked the catalog once per page."""
        with self._homes_lock:
            token = self.catalog.change_token()
            if token != self._homes_token or len(self._homes) > MAX_CACHED_HOMES:
                self._homes, self._homes_token = {}, token
            missing = [block_id for block_id in block_ids if block_id not in self._homes]
            if missing:
                self._homes.update(self.catalog.block_homes(missing))
            return {block_id: self._homes[block_id] for block_id in block_ids}

    def page_files(self) -> list[Path]:
        return [f for f in self.pages_dir.iterdir() if segment_number(f.name) is not None]

    def collect_garbage(self) -> list[str]:
        """Delete page files no page refers to: left by a crashed writer, or holding only
        pages retired longer than ``RETIRED_GRACE_SECONDS`` ago.

        Callers hold the writer lock, so no write in progress can own such a file.
        """
        self.catalog.forget_retired(time.time() - RETIRED_GRACE_SECONDS)
        referenced = self.catalog.referenced_files()
        removed = []
        for file in self.page_files():
            if file.name not in referenced:
                self.reader.forget(file.name)
                file.unlink()
                removed.append(file.name)
        return removed

    def next_ids(self) -> tuple[int, int, int]:
        """Next block id, page id and segment number; valid while the writer lock is held."""
        block, page = self.catalog.next_block_and_page_ids()
        segment = max((segment_number(f.name) for f in self.page_files()), default=0) + 1
        return block, page, segment

    def graph(self, name: str) -> onnx.ModelProto | None:
        """The model's ONNX graph without its stored initializers; None for weights only."""
        graph, _ = self.catalog.graph_and_metadata(self.catalog.model_id(name))
        if graph is None:
            return None
        model = onnx.ModelProto()
        model.ParseFromString(graph)
        return model

    def tensors(self, name: str) -> dict[str, StoredTensor]:
        """The stored tensors of a model, in source order, readable block by block, once the
        rows that map them are checked against their digests."""
        model_id = self.catalog.model_id(name)
        blocks = self.catalog.block_reads(model_id)
        result: dict[str, StoredTensor] = {}
        for row in self.catalog.tensor_rows(model_id):
            layout = BlockLayout(tuple(json.loads(row.shape)), row.block_rows, row.block_cols)
            if layout.num_blocks == 0:  # stored by a build that gave empty tensors a tall grid
                layout = layout_for(layout.shape, self.settings.block_shape)
            locations = np.zeros((*layout.grid, 2), dtype=np.int64)
            reads = blocks.get(row.tensor_id)
            if reads is not None:
                locations[reads[:, 0], reads[:, 1]] = reads[:, 2:]
            result[row.name] = StoredTensor(
                row.name,
                dtypes.by_name(row.dtype).numpy,
                layout.shape,
                layout,
                locations,
                self.pool,
                name,
            )
        return result

    def close(self) -> None:
        if self.read_only:
            self._stop_renewing.set()
            self.catalog.end_snapshot()
            self.catalog.drop_lease(self._reader_id)
        self.pool.clear()
        self.reader.close()
        self.catalog.close()
