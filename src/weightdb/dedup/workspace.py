"""The planner's view of the database: which block every position points at, editable in memory.

Nothing here writes to the catalog. A planned replacement only changes ``Workspace.current``;
``tensors(model)`` then hands the engine the model's stored tensors with those positions
reading their new block, so a candidate plan is evaluated by running the real model without
committing anything.
"""

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from weightdb.dedup.evalspec import Evaluator, Predict
from weightdb.dedup.metrics import Measurement
from weightdb.engine import prepare
from weightdb.storage.block_writer import BlockRecord
from weightdb.storage.blocking import BlockLayout
from weightdb.storage.store import Store
from weightdb.storage.stored_tensor import StoredTensor


@dataclass(frozen=True)
class Position:
    """Block (row, col) of a tensor of a model."""

    model: str
    tensor: str
    tensor_id: int
    row: int
    col: int


class Workspace:
    """A snapshot of the catalog (taken under the writer lock) plus planned changes."""

    def __init__(self, store: Store, models: list[str]) -> None:
        self.store = store
        self.models = models  # import order
        self.blocks: dict[int, BlockRecord] = {
            row[0]: BlockRecord(*row) for row in store.catalog.block_rows()
        }
        self.original: dict[Position, int] = {}
        self.tensor_blocks: dict[int, int] = defaultdict(int)  # tensor id -> blocks
        self._tensors: dict[str, dict[str, StoredTensor]] = {}
        self._graphs: dict[str, onnx.ModelProto] = {}
        self.users: dict[int, set[str]] = defaultdict(set)  # block id -> models using it
        self._by_model: dict[str, list[Position]] = defaultdict(list)
        for model, tensor_id, tensor, row, col, block_id in store.catalog.position_rows():
            position = Position(model, tensor, tensor_id, row, col)
            self.original[position] = block_id
            self._by_model[model].append(position)
            self.tensor_blocks[tensor_id] += 1
            self.users[block_id].add(model)
        self.current = dict(self.original)
        self._matrices: dict[int, np.ndarray] = {}

    # -- reading ------------------------------------------------------------------------

    def positions(self, model: str) -> list[Position]:
        return self._by_model[model]

    def holders(self) -> dict[int, list[Position]]:
        """Block id -> the positions that point at it now."""
        result: dict[int, list[Position]] = defaultdict(list)
        for position, block_id in self.current.items():
            result[block_id].append(position)
        return result

    def array(self, block_id: int) -> np.ndarray:
        """A copy of a block (cached: similarity search reads blocks many times)."""
        matrix = self._matrices.get(block_id)
        if matrix is None:
            block = self.blocks[block_id]
            with self.store.pool.pinned(block.page_id) as page:
                matrix = np.array(page.block(block.slot), order="C")
            self._matrices[block_id] = matrix
        return matrix

    def _stored(self, model: str) -> dict[str, StoredTensor]:
        """The model's stored tensors as the catalog has them (read once)."""
        if model not in self._tensors:
            self._tensors[model] = self.store.tensors(model)
        return self._tensors[model]

    def graph(self, model: str) -> onnx.ModelProto:
        """The model's graph as the catalog has it (read, checked and parsed once: every
        evaluation prepares it again)."""
        if model not in self._graphs:
            self._graphs[model] = self.store.graph(model)
        return self._graphs[model]

    def layout(self, position: Position) -> BlockLayout:
        """The block grid of the tensor ``position`` lies in."""
        return self._stored(position.model)[position.tensor].layout

    def stored_bytes(self, block_ids: set[int] | None = None) -> int:
        ids = set(self.current.values()) if block_ids is None else block_ids
        return sum(self.blocks[b].nbytes for b in ids)

    # -- evaluating ---------------------------------------------------------------------

    def tensors(self, model: str) -> dict[str, StoredTensor]:
        """The model's stored tensors, with planned replacements in place."""
        tensors = dict(self._stored(model))
        changed: dict[str, list[tuple[Position, int]]] = defaultdict(list)
        for position in self.positions(model):
            block_id = self.current[position]
            if block_id != self.original[position]:
                changed[position.tensor].append((position, block_id))
        for name, moves in changed.items():
            locations = tensors[name].locations.copy()
            for position, block_id in moves:
                block = self.blocks[block_id]
                locations[position.row, position.col] = (block.page_id, block.slot)
            tensors[name] = dataclasses.replace(tensors[name], locations=locations)
        return tensors

    def predictor(self, model: str) -> Predict:
        prepared = prepare(self.graph(model), self.tensors(model))

        def predict(inputs):
            return next(iter(prepared.run(inputs).values()))

        return predict

    def measure(self, model: str, evaluator: Evaluator, split: str) -> Measurement:
        return evaluator.measure(self.predictor(model), split)
