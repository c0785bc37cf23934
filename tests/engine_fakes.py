"""Test doubles for the engine: a stored weight that counts pins, and ONNX export helpers."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from weightdb.engine import InMemoryWeight, split_initializers


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
        ledger = self._ledger
        ledger.active += 1
        ledger.peak = max(ledger.peak, ledger.active)
        ledger.read.add((self.name, i, j))
        try:
            with self._source.block(i, j) as block:
                yield block
        finally:
            ledger.active -= 1


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
