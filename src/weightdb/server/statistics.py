"""Per-model inference statistics in the shape of the KServe v2 statistics extension (as Triton
answers ``GET /v2/models[/{name}]/stats``): cumulative counts and nanoseconds since the server
started.

Per request: ``success`` and ``fail`` (arrival to answer), ``queue`` (arrival to the start of its
batch), ``compute_input`` (checking and converting its inputs), ``compute_infer`` (the run of
the batch it was in) and ``compute_output`` (encoding its answer). Per run of the engine:
``execution_count`` and ``batch_stats`` by batch rows; ``inference_count`` counts rows, so 64
requests of one row and one request of 64 rows both add 64.
"""

import threading
import time
from dataclasses import dataclass, field

_REQUEST_STAGES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
_BATCH_STAGES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


def _stages(names: tuple[str, ...]) -> dict[str, _Duration]:
    return {name: _Duration() for name in names}


@dataclass
class _ModelStatistics:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    stages: dict[str, _Duration] = field(default_factory=lambda: _stages(_REQUEST_STAGES))
    batches: dict[int, dict[str, _Duration]] = field(default_factory=dict)

    def as_json(self, name: str) -> dict:
        return {
            "name": name,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: vars(v).copy() for k, v in self.stages.items()},
            "batch_stats": [
                {"batch_size": size, **{k: vars(v).copy() for k, v in stages.items()}}
                for size, stages in sorted(self.batches.items())
            ],
        }


class InferenceStatistics:
    """Thread-safe: the batching worker records runs while the event loop records answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelStatistics] = {}

    def answered(self, model: str, ok: bool, ns: int) -> None:
        """One request answered (success or failure), arrival to answer."""
        with self._lock:
            stats = self._model(model)
            stats.stages["success" if ok else "fail"].add(ns)
            stats.last_inference_ms = time.time_ns() // 1_000_000

    def converted(self, model: str, ns: int) -> None:
        """One request's inputs checked and converted to the model's dtypes."""
        with self._lock:
            self._model(model).stages["compute_input"].add(ns)

    def executed(self, model: str, queued_ns: list[int], rows: int, ns: int) -> None:
        """One run of the engine over ``rows`` rows from requests that waited ``queued_ns``."""
        with self._lock:
            stats = self._model(model)
            stats.execution_count += 1
            stats.inference_count += rows
            stats.stages["queue"].add(sum(queued_ns), len(queued_ns))
            stats.stages["compute_infer"].add(ns * len(queued_ns), len(queued_ns))
            batch = stats.batches.setdefault(rows, _stages(_BATCH_STAGES))
            batch["compute_infer"].add(ns)

    def encoded(self, model: str, ns: int) -> None:
        """One answer encoded for the wire."""
        with self._lock:
            self._model(model).stages["compute_output"].add(ns)

    def as_json(self, models: list[str]) -> dict:
        """``{"model_stats": [...]}`` for ``models``, zeros for one not yet requested."""
        with self._lock:
            return {
                "model_stats": [
                    self._models.get(name, _ModelStatistics()).as_json(name) for name in models
                ]
            }

    def _model(self, model: str) -> _ModelStatistics:
        return self._models.setdefault(model, _ModelStatistics())
