"""Sharing groups: which workers serve which models, so models that share pages land together.

Every worker has its own buffer pool over the one shared page store. A page is read from
storage once per worker that needs it, so the bytes a cluster reads grow with the pages each
worker's models span; putting models that share pages on one worker reads a shared page once.
Load must stay balanced too: each worker takes at most ``slack`` times the mean load, and a
model hotter than that is split into replicas on distinct workers, its requests spread evenly.

Greedy, one worker at a time: a worker starts from the hottest replica left, then takes the
replica whose pages overlap its pages most (in bytes) among those that fit, until it carries
its mean share of the load; a family of fine-tunes thus grows on one worker instead of being
spread over all. Replicas no worker had room for go to the least loaded worker.
"""

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Model -> the workers that serve it (its replicas), for ``workers`` workers."""

    workers: int
    replicas: Mapping[str, tuple[int, ...]]

    def worker_for(self, model: str, request: int) -> int:
        """The worker for request number ``request`` of ``model``: its replicas in turn."""
        replicas = self.replicas[model]
        return replicas[request % len(replicas)]

    def loads(self, load: Mapping[str, float]) -> list[float]:
        """Expected load per worker when each model's load is spread evenly over its replicas."""
        totals = [0.0] * self.workers
        for model, replicas in self.replicas.items():
            for worker in replicas:
                totals[worker] += load.get(model, 0.0) / len(replicas)
        return totals

    def worker_pages(self, model_pages: Mapping[str, Collection[int]]) -> list[set[int]]:
        """The distinct pages each worker's models read."""
        pages: list[set[int]] = [set() for _ in range(self.workers)]
        for model, replicas in self.replicas.items():
            for worker in replicas:
                pages[worker].update(model_pages[model])
        return pages


def place_models(
    model_pages: Mapping[str, Collection[int]],
    load: Mapping[str, float],
    workers: int,
    page_bytes: Mapping[int, int] | None = None,
    slack: float = 1.2,
) -> Placement:
    """Place every model of ``model_pages`` (model -> page ids it reads) on ``workers`` workers.

    ``load`` is each model's expected share of requests or rows (missing models count as
    zero); ``page_bytes`` weighs pages (every page counts 1 without it). No worker's expected
    load exceeds ``slack`` times the mean unless one replica alone is larger.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    if slack < 1:
        raise ValueError(f"slack must be at least 1, got {slack}")
    total = sum(load.get(model, 0.0) for model in model_pages)
    capacity = slack * total / workers
    items: list[tuple[float, str]] = []
    for model in model_pages:
        model_load = load.get(model, 0.0)
        count = min(workers, max(1, math.ceil(model_load / capacity - 1e-9))) if capacity else 1
        items += [(model_load / count, model)] * count
    items.sort(key=lambda item: (-item[0], item[1]))

    def size(pages: Collection[int]) -> int:
        return len(pages) if page_bytes is None else sum(page_bytes[page] for page in pages)

    replicas: dict[str, list[int]] = {model: [] for model in model_pages}
    loads = [0.0] * workers
    resident: list[set[int]] = [set() for _ in range(workers)]

    def put(index: int, worker: int) -> None:
        share, model = items.pop(index)
        replicas[model].append(worker)
        resident[worker].update(model_pages[model])
        loads[worker] += share

    target = total / workers
    for worker in range(workers):
        while items and loads[worker] < target * (1 - 1e-9):
            fitting = [
                index
                for index, (share, model) in enumerate(items)
                if worker not in replicas[model] and loads[worker] + share <= capacity * (1 + 1e-9)
            ]
            if not fitting:
                break
            put(
                max(
                    fitting,
                    key=lambda i: (size(resident[worker] & set(model_pages[items[i][1]])), -i),
                ),
                worker,
            )
    while items:  # what no worker had room for: the least loaded one that lacks the model
        model = items[0][1]
        free = [w for w in range(workers) if w not in replicas[model]]
        put(0, min(free, key=lambda w: (loads[w], size(set(model_pages[model]) - resident[w]), w)))
    return Placement(workers, {model: tuple(ws) for model, ws in replicas.items()})


def round_robin(models: Collection[str], workers: int) -> Placement:
    """Every model on every worker, each model's requests or rows in turn: perfect balance and
    no regard for sharing, the baseline that affinity routing is measured against."""
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    return Placement(workers, {model: tuple(range(workers)) for model in models})
