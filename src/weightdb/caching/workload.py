"""Synthetic serving workloads over a model family, for benchmarks and demos.

A family maps each model to the pages it reads, in reading order; a request for a model reads
all of them front to back. Model popularity follows a Zipf law (rank r is requested with weight
1 / r**skew) over a seeded random ranking; the shifting workload rotates the ranking half-way
through, so that yesterday's popular models become rare and rare ones popular.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from weightdb.caching.trace import Trace


def zipf_trace(
    family: Mapping[str, Sequence[str]],
    page_bytes: Mapping[str, int],
    model_requests: int,
    skew: float,
    seed: int = 0,
    shift: bool = False,
) -> Trace:
    """``model_requests`` requests drawn from one Zipf popularity ranking; with ``shift`` the
    ranking rotates by half the models mid-trace."""
    models = request_sequence(list(family), model_requests, skew, seed, shift)
    return _trace(family, page_bytes, models)


def request_sequence(
    models: Sequence[str], count: int, skew: float, seed: int = 0, shift: bool = False
) -> list[str]:
    """Which model each of ``count`` requests asks for, under Zipf popularity (optionally
    rotating the ranking half-way through)."""
    rng = np.random.default_rng(seed)
    models = list(models)
    ranking = rng.permutation(len(models))  # ranking[r] = index of the model at rank r
    weights = 1.0 / np.arange(1, len(models) + 1) ** skew
    ranks = rng.choice(len(models), size=count, p=weights / weights.sum())
    if shift:
        ranks[count // 2 :] = (ranks[count // 2 :] + len(models) // 2) % len(models)
    return [models[ranking[rank]] for rank in ranks]


def _trace(
    family: Mapping[str, Sequence[str]], page_bytes: Mapping[str, int], models: list[str]
) -> Trace:
    referencing: dict[str, list[str]] = {}
    for model, pages in family.items():
        for page in pages:
            referencing.setdefault(page, []).append(model)
    pages = {page: (owners, page_bytes[page]) for page, owners in referencing.items()}
    return Trace.build(pages, [(model, page) for model in models for page in family[model]])
