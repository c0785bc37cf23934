"""Dynamic batching: a bounded queue of requests, cut into rounds of per-model batches, run by
one worker thread.

The worker takes a round as soon as the oldest queued request has waited ``max_wait_ms`` or a
batch is full, so under load rounds form back to back without waiting, and an idle server adds
at most ``max_wait_ms`` to a lone request. A round holds, per model and input shape, up to
``max_batch`` rows; the scheduler orders the round's models so shared pages are read once. One
worker runs everything: the engine's kernels use the cores, and one reader of the buffer pool
is what makes "read once per round" hold.
"""

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from weightdb.database import Database
from weightdb.engine import PreparedModel
from weightdb.errors import WeightDBError
from weightdb.server.config import ServerConfig
from weightdb.server.errors import ApiError, QueueFullError, ShuttingDownError
from weightdb.server.metrics import ServerMetrics
from weightdb.server.scheduler import SharingScheduler

Outputs = dict[str, np.ndarray]


@dataclass(eq=False)
class Request:
    model: str
    inputs: dict[str, np.ndarray]
    deliver: Callable[[Outputs | Exception], None]
    arrived: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # the client gave up; skipped unless already running

    @property
    def rows(self) -> int:
        first = next(iter(self.inputs.values()))
        return first.shape[0] if first.ndim else 1

    @property
    def key(self) -> tuple:
        """Requests with equal keys can be stacked along the first axis."""
        shapes = sorted((n, a.shape[1:], a.dtype.str) for n, a in self.inputs.items())
        return (self.model, tuple(shapes))


Batch = list[Request]


class RequestQueue:
    def __init__(self, capacity: int, max_rows: int, max_wait_s: float) -> None:
        self._capacity = capacity
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._pending: deque[Request] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, request: Request) -> None:
        with self._ready:
            if self._closed:
                raise ShuttingDownError()
            if len(self._pending) >= self._capacity:
                raise QueueFullError(self._capacity)
            self._pending.append(request)
            self._ready.notify()

    def close(self) -> None:
        """Refuse new requests; ``take_round`` drains what is queued, then returns None."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take_round(self) -> list[Batch] | None:
        """Block until a round is due; its batches in order of first arrival."""
        with self._ready:
            while True:
                while self._pending and self._pending[0].abandoned:
                    self._pending.popleft()
                if not self._pending:
                    if self._closed:
                        return None
                    self._ready.wait()
                    continue
                groups = self._groups()
                wait = self._pending[0].arrived + self._max_wait_s - time.monotonic()
                full = any(sum(r.rows for r in g) >= self._max_rows for g in groups.values())
                if self._closed or wait <= 0 or full:
                    break
                self._ready.wait(wait)
            batches = [self._fill(group) for group in groups.values()]
            taken = {id(r) for batch in batches for r in batch}
            self._pending = deque(r for r in self._pending if id(r) not in taken)
            return batches

    def _groups(self) -> dict[tuple, Batch]:
        groups: dict[tuple, Batch] = {}
        for request in self._pending:
            if not request.abandoned:
                groups.setdefault(request.key, []).append(request)
        return groups

    def _fill(self, group: Batch) -> Batch:
        """The longest prefix of ``group`` within ``max_rows`` rows (at least one request)."""
        batch, rows = [group[0]], group[0].rows
        for request in group[1:]:
            if rows + request.rows > self._max_rows:
                break
            batch.append(request)
            rows += request.rows
        return batch


def run_batch(db: Database, batch: Batch, metrics: ServerMetrics | None = None) -> int:
    """Run one model on a batch and deliver each request its rows of the outputs; returns the
    rows that ran (0 when the model does not exist or no request was valid).

    Requests are stacked only for a model whose graph is row-independent (see
    ``engine.row_independence``): stacking any other would let one client's rows change
    another's answer. Requests are checked one by one first, so a bad request fails alone. A
    batch whose run fails on its inputs (e.g. a token id outside the vocabulary) is rerun
    request by request for the same reason. ``metrics`` counts input casts and records the
    statistics of each run.
    """
    try:
        prepared, rows_apart = db.prepared.batchable(batch[0].model)
    except Exception as error:
        for request in batch:
            request.deliver(error)
        return 0
    valid = [request for request in batch if _validated(prepared, request, metrics)]
    stackable = [r for r in valid if _one_batch_size(r)] if rows_apart.independent else []
    alone = [r for r in valid if r not in stackable]
    if len(stackable) > 1 and _run_stacked(prepared, stackable, metrics):
        stackable = []
    for request in alone + stackable:
        try:
            request.deliver(_run(prepared, [request], request.inputs, metrics))
        except Exception as error:
            request.deliver(error)
    return sum(request.rows for request in valid)


def _run(
    prepared: PreparedModel, requests: Batch, inputs: Outputs, metrics: ServerMetrics | None
) -> Outputs:
    """``prepared.run(inputs)`` for ``requests``, recorded in the statistics when it succeeds."""
    started = time.monotonic()
    outputs = prepared.run(inputs)
    if metrics is not None:
        metrics.statistics.executed(
            requests[0].model,
            queued_ns=[int((started - r.arrived) * 1e9) for r in requests],
            rows=sum(r.rows for r in requests),
            ns=int((time.monotonic() - started) * 1e9),
        )
    return outputs


def _run_stacked(prepared: PreparedModel, requests: Batch, metrics: ServerMetrics | None) -> bool:
    """Run ``requests`` stacked into one batch and deliver each its rows; False, having
    delivered nothing, when the run fails on its inputs or its outputs do not split into rows
    (the requests then run alone)."""
    try:
        stacked = {
            name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs
        }
        parts = _split(_run(prepared, requests, stacked, metrics), [r.rows for r in requests])
    except WeightDBError:
        return False
    except Exception as error:  # a bug: each request answers it rather than hang
        for request in requests:
            request.deliver(error)
        return True
    if parts is None:
        return False
    for request, outputs in zip(requests, parts, strict=True):
        request.deliver(outputs)
    return True


def _validated(prepared: PreparedModel, request: Request, metrics: ServerMetrics | None) -> bool:
    """Convert the request's inputs to the graph's dtypes, counting each cast; deliver the
    error if they are wrong."""
    started = time.monotonic()
    try:
        arrays = prepared.validate(request.inputs)
    except Exception as error:
        request.deliver(error)
        return False
    converted = {spec.name: a for spec, a in zip(prepared.inputs, arrays, strict=True)}
    if metrics is not None:
        for name, array in converted.items():
            given = request.inputs[name].dtype
            if given != array.dtype:
                metrics.input_casts.labels(request.model, name, str(given), str(array.dtype)).inc()
        metrics.statistics.converted(request.model, int((time.monotonic() - started) * 1e9))
    request.inputs = converted
    return True


def _one_batch_size(request: Request) -> bool:
    """Every input has the same first dimension, as the analysis assumes of stacked inputs:
    stacking ``a`` of 1 row and ``b`` of 2 rows with another request would pair rows of
    different requests."""
    return len({a.shape[0] if a.ndim else None for a in request.inputs.values()}) == 1


def _split(outputs: Outputs, rows: list[int]) -> list[Outputs] | None:
    """Each request's rows of every output; None if some output is not one row per input row."""
    total = sum(rows)
    if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
        return None
    bounds = np.cumsum(rows)[:-1]
    pieces = {name: np.split(a, bounds) for name, a in outputs.items()}
    return [{name: pieces[name][k] for name in outputs} for k in range(len(rows))]


class Batcher:
    """The queue, the scheduler and the worker thread; ``infer`` is the async entry point."""

    def __init__(self, db: Database, config: ServerConfig, metrics: ServerMetrics) -> None:
        self._db = db
        self._timeout_s = config.timeout_s
        self._metrics = metrics
        self.queue = RequestQueue(config.max_queue, config.max_batch, config.max_wait_ms / 1000)
        self._scheduler = SharingScheduler(db)
        self._thread = threading.Thread(target=self._work, name="weightdb-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued request, then end the worker."""
        self.queue.close()
        self._thread.join()

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> Outputs:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Outputs] = loop.create_future()

        def deliver(result: Outputs | Exception) -> None:
            loop.call_soon_threadsafe(_settle, answer, result)

        request = Request(model, inputs, deliver)
        self.queue.put(request)
        try:
            return await asyncio.wait_for(answer, self._timeout_s)
        except TimeoutError:
            request.abandoned = True
            raise ApiError(
                504, f"no answer within {self._timeout_s:g} s (the server's --timeout)"
            ) from None

    def _work(self) -> None:
        while (batches := self.queue.take_round()) is not None:
            try:
                self._run_round(batches)
            except Exception as error:  # a bug: answer 500 rather than leave clients hanging
                for batch in batches:
                    for request in batch:
                        request.deliver(error)

    def _run_round(self, batches: list[Batch]) -> None:
        by_model: dict[str, list[Batch]] = {}
        for batch in batches:
            by_model.setdefault(batch[0].model, []).append(batch)
        before = self._db.pool.stats().bytes_read
        with self._scheduler.round(list(by_model)) as current:
            for model in current.order:
                for batch in by_model[model]:
                    rows = run_batch(self._db, batch, self._metrics)
                    if rows:
                        self._metrics.batch_rows.labels(model).observe(rows)
                current.finished(model)
        self._metrics.round_read_bytes.observe(self._db.pool.stats().bytes_read - before)
        self._metrics.round_models.observe(len(by_model))


def _settle(answer: asyncio.Future, result: Outputs | Exception) -> None:
    if answer.done():  # timed out meanwhile
        return
    if isinstance(result, Exception):
        answer.set_exception(result)
    else:
        answer.set_result(result)
