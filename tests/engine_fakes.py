"""Test doubles for the engine: a stored weight that counts pins, and ONNX export helpers."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from weightdb.engine import InMemoryWeight
from weightdb.storage.blocking import layout_for


class PinLedger:
    """Pins across all weights of one model: how many are held now, at most, and which blocks."""

    def __init__(self):
        self.active = 0
        self.peak = 0
        self.read: set[tuple[str, int, int]] = set()


class CountingWeight:
    """A ``StoredWeight`` over an in-memory one that records every pin in a shared ledger."""

    def __init__(self, source: InMemoryWeight, ledger: PinLedger):
        self.name, self.dtype, self.shape = source.name, source.dtype, source.shape
        self.layout = source.layout
        self._source = source
        self._ledger = ledger

    @contextmanager
    def block(self, i: int, j: int) -> Iterator[np.ndarray]:
        """Block (i, j), a contiguous copy as storage would give it, pinned while in use."""
        ledger = self._ledger
        ledger.active += 1
        ledger.peak = max(ledger.peak, ledger.active)
        ledger.read.add((self.name, i, j))
        r0, r1, c0, c1 = self.layout.bounds(i, j)
        try:
            yield np.ascontiguousarray(self._source.matrix[r0:r1, c0:c1])
        finally:
            ledger.active -= 1

    def region(self, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """Copied block by block, each pinned only for its copy (a page per block)."""
        (r0, r1), (c0, c1) = rows, cols
        layout = self.layout
        out = np.empty((r1 - r0, c1 - c0), dtype=dtype)
        for i in range(r0 // layout.block_rows, -(-r1 // layout.block_rows)):
            for j in range(c0 // layout.block_cols, -(-c1 // layout.block_cols)):
                br0, br1, bc0, bc1 = layout.bounds(i, j)
                lo_r, hi_r, lo_c, hi_c = max(r0, br0), min(r1, br1), max(c0, bc0), min(c1, bc1)
                with self.block(i, j) as block:
                    out[lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0] = block[
                        lo_r - br0 : hi_r - br0, lo_c - bc0 : hi_c - bc0
                    ]
        return out

    def pins_at_once(self) -> int:
        return 1  # a pool of one page: products run serially, one pin at a time

    def panel_groups(self, axis: str, indices: list[int]) -> list[list[int]]:
        return [[index] for index in indices]

    @contextmanager
    def panels(self, axis: str, group: list[int]) -> Iterator[list[None]]:
        """No zero-copy panels: the engine copies blocks, each pinned through ``block``."""
        yield [None] * len(group)

    def resident_matrix(self, rows: np.ndarray) -> None:
        """Never resident as one array: gathers read block by block."""
        return None

    def take_rows(self, ids: np.ndarray) -> np.ndarray:
        """Each block of a requested row copied out of, pinned only for its copy."""
        layout = self.layout
        out = np.empty((ids.size, layout.matrix_shape[1]), self.dtype)
        for k, row in enumerate(ids.tolist()):
            i = row // layout.block_rows
            for j in range(layout.grid[1]):
                r0, _, c0, c1 = layout.bounds(i, j)
                with self.block(i, j) as block:
                    out[k, c0:c1] = block[row - r0]
        return out


def split_initializers(
    model: onnx.ModelProto, block_shape: tuple[int, int], min_elements: int = 1024
) -> tuple[onnx.ModelProto, dict[str, InMemoryWeight]]:
    """Move initializers of ``min_elements`` or more out of a copy of the graph, as storage
    does at import, so the engine can be tested without a database."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept, weights = [], {}
    for tensor in stripped.graph.initializer:
        dims = tuple(tensor.dims)
        if int(np.prod(dims)) >= min_elements:
            array = numpy_helper.to_array(tensor)
            layout = layout_for(tuple(array.shape), block_shape)
            weights[tensor.name] = InMemoryWeight(tensor.name, array, layout)
        else:
            kept.append(tensor)
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(kept)
    return stripped, weights


def stored(
    path: Path, block_shape: tuple[int, int], min_elements: int = 256
) -> tuple[onnx.ModelProto, dict[str, CountingWeight], PinLedger]:
    """The graph at ``path`` as storage would hand it over, with pin-counting weights."""
    graph, weights = split_initializers(onnx.load(str(path)), block_shape, min_elements)
    ledger = PinLedger()
    return graph, {n: CountingWeight(w, ledger) for n, w in weights.items()}, ledger


def export(
    module: torch.nn.Module, example: tuple, path: Path, names: list[str], dynamic: dict
) -> Path:
    """Export with the TorchScript exporter (the dynamo one needs onnxscript)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
            dynamo=False,
        )
    return path


def onnxruntime_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())
