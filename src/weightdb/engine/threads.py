"""The engine's own threads for matrix products, with BLAS single-threaded meanwhile.

A multi-threaded BLAS call ends in a barrier: every BLAS thread must finish its share. When the
machine is busy, one of them waits for a time slice, and each call pays a scheduler delay
(measured: 2-thread OpenBLAS 3-15x slower than 1 thread under a load of 4 on 2 cores, while
onnxruntime slowed 1.5x). So while a prediction runs, BLAS gets one thread, and the parts of
a product over a stored weight are tasks that the engine's workers take from a queue: a worker
that loses the CPU just takes fewer tasks. Which worker computes a part does not change its
bits; how a product is cut into parts can, so parts depend on shapes alone (``blocked``).

The worker count is the BLAS thread count configured when the first concurrent prediction
starts (e.g. with ``threadpoolctl.threadpool_limits`` or ``OPENBLAS_NUM_THREADS``), so one
setting governs both. BLAS is restored when the last concurrent prediction ends; until then
BLAS calls from other threads of the process run single-threaded too.
"""

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from itertools import pairwise
from typing import Any, TypeVar

import threadpoolctl

# Products smaller than this (about 0.05 ms of one core at 100 GFLOP/s, a 32-token MiniLM
# projection) stay on the calling thread: handing a task to a helper costs 20 us on an idle
# machine, and on a busy one a helper that has not started when the caller runs out of tasks
# is cancelled, not waited for.
MIN_PARALLEL_MACS = 1 << 22
# Gathers move each element once, from rows all over a table. Measured (bags of 32 rows of
# 384 float32): 2^21 elements took about 1 ms on one core and 0.7-1.1 ms less shared by two;
# at 2^19, 0.2 ms alone and more when shared.
MIN_PARALLEL_ELEMENTS = 1 << 21

T = TypeVar("T")

_workers: ContextVar[int] = ContextVar("weightdb_engine_workers", default=1)


class _BlasThreads:
    """BLAS held at one thread while any prediction runs, restored when the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: list[tuple[Any, int]] = []  # threadpoolctl library handle, threads

    @contextmanager
    def lent(self) -> Iterator[int]:
        """Yields the thread count BLAS had before the first concurrent prediction took it."""
        with self._lock:
            if self._users == 0:
                libraries = _blas_libraries()
                self._saved = [(lib, lib.num_threads) for lib in libraries]
                for lib in libraries:
                    lib.set_num_threads(1)
            self._users += 1
            threads = max((n for _, n in self._saved), default=1)
        try:
            yield threads
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    for lib, n in self._saved:
                        lib.set_num_threads(n)


@cache
def _blas_libraries() -> list:
    """threadpoolctl's handles on the loaded BLAS libraries (found once; numpy loads its own)."""
    return threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers


_BLAS = _BlasThreads()


@contextmanager
def engine_threads() -> Iterator[None]:
    """Run a prediction with the engine's workers doing the parallel part (see module doc)."""
    if not _blas_libraries():
        yield
        return
    with _BLAS.lent() as threads:
        token = _workers.set(threads)
        try:
            yield
        finally:
            _workers.reset(token)


@cache
def _helpers(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(count, thread_name_prefix="weightdb-engine")


def workers() -> int:
    """The engine's worker count for the running prediction (1 outside predictions)."""
    return _workers.get()


def worth(work: int) -> bool:
    """Whether a product of ``work`` multiply-adds is worth sharing with the workers."""
    return _workers.get() > 1 and work >= MIN_PARALLEL_MACS


def worth_gathering(elements: int) -> bool:
    """Whether gathering ``elements`` values from a table is worth sharing with the workers."""
    return _workers.get() > 1 and elements >= MIN_PARALLEL_ELEMENTS


def shares(count: int, parallel: bool) -> list[tuple[int, int]]:
    """[0, count) cut into nearly equal spans, two per worker when ``parallel`` (so a worker
    that gets the CPU late costs little), else one."""
    pieces = max(1, min(count, 2 * _workers.get())) if parallel else 1
    edges = [count * piece // pieces for piece in range(pieces + 1)]
    return list(pairwise(edges))


def run_all(task: Callable[[T], None], spans: Sequence[T], parallel: bool) -> None:
    """``task(span)`` for every span: shared with the workers if ``parallel``, else in order.

    The calling thread is one of the workers and takes tasks too. Helpers that have not started
    by the time the tasks run out are cancelled, not waited for: on a busy machine a helper may
    wait long for a time slice, and the caller does not wait with it.
    """
    if not parallel or len(spans) == 1:
        for span in spans:
            task(span)
        return
    pending = iter(spans)
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                span = next(pending, None)
            if span is None:
                return
            task(span)

    count = _workers.get() - 1
    # Helpers run in copies of the caller's context, so they compute as the caller asked
    # (e.g. ``gemm.batch_invariance``).
    futures = [
        _helpers(count).submit(contextvars.copy_context().run, drain)
        for _ in range(min(count, len(spans) - 1))
    ]
    drain()
    for future in futures:
        if not future.cancel():
            future.result()
