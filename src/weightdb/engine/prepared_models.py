"""Compiled models kept ready between predictions, invalidated when a model changes.

Compiling a graph costs far more than a small prediction, so the database keeps the most
recently used ``PreparedModel``s. An entry is keyed by the model's catalog row id and the
catalog's layout generation, so a re-imported model, or a layout change, is compiled afresh
while in-flight predictions finish on the objects they hold. The key is looked up again only
when the catalog's change token moved, so a request to an unchanged catalog costs one pragma.
Each entry also holds whether the graph's rows are independent, judged on the same graph, so a
batcher never pairs one graph's verdict with another graph's run.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass

import onnx

from weightdb.engine.executor import PreparedModel, prepare
from weightdb.engine.row_independence import RowIndependence, row_independence
from weightdb.errors import WeightDBError
from weightdb.storage.store import Store
from weightdb.storage.stored_tensor import StoredTensor


@dataclass
class _Entry:
    key: tuple[int, int]  # the model's row id and the layout generation it was compiled at
    token: tuple[int, int]  # the catalog's change token when ``key`` was last confirmed
    prepared: PreparedModel
    independence: RowIndependence


class PreparedModels:
    def __init__(self, store: Store, batch_invariant: bool, capacity: int = 32) -> None:
        self._store = store
        self._batch_invariant = batch_invariant
        self._capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> PreparedModel:
        return self.batchable(name)[0]

    def batchable(self, name: str) -> tuple[PreparedModel, RowIndependence]:
        """The compiled model and whether requests for it may be stacked into one batch."""
        catalog = self._store.catalog
        token = catalog.change_token()
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.token == token:
                self._entries.move_to_end(name)
                return entry.prepared, entry.independence
        key = (catalog.model_id(name), catalog.layout_generation())
        if entry is None or entry.key != key:
            entry = _Entry(key, token, *self._compile(name))
        entry.token = token
        with self._lock:
            self._entries[name] = entry
            self._entries.move_to_end(name)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return entry.prepared, entry.independence

    def clear(self) -> None:
        """Drop every compiled model."""
        with self._lock:
            self._entries.clear()

    def _compile(self, name: str) -> tuple[PreparedModel, RowIndependence]:
        model = self._store.graph(name)
        if model is None:
            raise WeightDBError(
                f"model {name!r} has weights but no graph, so it cannot predict; import it "
                "with its ONNX graph (`weightdb import WEIGHTS --graph MODEL.onnx`)"
            )
        store = self._store
        tensors = store.tensors(name)
        streamed = _read_whole(model, tensors)

        def on_run() -> None:
            store.pool.begin_query(name)
            store.pool.prefetch(streamed)

        prepared = prepare(model, tensors, on_run=on_run, batch_invariant=self._batch_invariant)
        return prepared, row_independence(model, {n: t.shape for n, t in tensors.items()})


def _read_whole(model: onnx.ModelProto, tensors: dict[str, StoredTensor]) -> list[int]:
    """The pages of the weights a run reads whole, in source order: every stored weight but
    the tables a Gather takes rows from, whose pages depend on the request."""
    gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    pages = (t.pages() for name, t in tensors.items() if name not in gathered)
    return list(dict.fromkeys(page for tensor_pages in pages for page in tensor_pages))
