"""Synthetic instances shaped like a model zoo, for tests and benchmarks at any size.

Models come in families of fine-tunes of one base model. Each fine-tune freezes the first few
of the base's layers (shared with every sibling that freezes at least as deep) and retrains the
rest (private blocks); all models also share one embedding. Popularity follows Zipf's law.
"""

import random
from dataclasses import replace

from weightdb.packing.instance import Instance

LAYERS = 12


def fine_tune_families(
    models: int = 100,
    distinct_blocks: int = 50_000,
    blocks_per_page: int = 64,
    families: int = 10,
    seed: int = 0,
) -> Instance:
    """An instance with exactly ``distinct_blocks`` distinct blocks (at least ~20 per model)."""
    rng = random.Random(seed)
    names = [f"f{index % families}_m{index // families}" for index in range(models)]
    depth = {name: rng.randint(1, LAYERS - 1) for name in names}
    members = [[n for n in names if n.startswith(f"f{f}_")] for f in range(min(families, models))]
    # Layer units: base layers some member freezes, plus each model's retrained layers.
    units = sum(max(depth[n] for n in family) for family in members)
    units += sum(LAYERS - depth[n] for n in names)
    layer_size = max(1, int(0.9 * distinct_blocks) // units)
    embedding = distinct_blocks - layer_size * units
    if embedding < 1:
        raise ValueError(f"{distinct_blocks} blocks are too few for {models} models")

    next_id = iter(range(distinct_blocks))

    def fresh(count: int) -> list[int]:
        return [next(next_id) for _ in range(count)]

    shared = fresh(embedding)
    blocks = {name: list(shared) for name in names}
    for family in members:
        for layer in range(max(depth[n] for n in family)):
            base_layer = fresh(layer_size)
            for name in family:
                if layer < depth[name]:
                    blocks[name] += base_layer
    for name in names:
        blocks[name] += fresh(layer_size * (LAYERS - depth[name]))
    popularity = list(range(1, models + 1))
    rng.shuffle(popularity)
    return Instance.from_models(
        blocks,
        blocks_per_page,
        frequencies={name: 1.0 / rank for name, rank in zip(names, popularity, strict=True)},
        name=f"synthetic_{models}x{distinct_blocks}_cap{blocks_per_page}",
    )


def lineage(
    models: int = 30,
    distinct_blocks: int = 30_000,
    blocks_per_page: int = 64,
    changed: tuple[float, float] = (0.02, 0.3),
    churn: float = 0.0,
    seed: int = 0,
) -> Instance:
    """A tree of fine-tunes: each model copies a random earlier one and rewrites a random
    fraction (drawn from ``changed``) of its blocks; with ``churn``, every generation also
    rewrites the next slice of that fraction of the positions, as when training rolls through
    the layers. About ``distinct_blocks`` distinct blocks; many sharing signatures, as in a
    family of fine-tunes of fine-tunes."""
    rng = random.Random(seed)
    fractions = [rng.uniform(*changed) for _ in range(models - 1)]
    size = max(1, round(distinct_blocks / (1 + sum(f + churn - f * churn for f in fractions))))
    next_id = iter(range(10**12))
    weights = [[next(next_id) for _ in range(size)]]
    depth = [0]
    slice_size = round(churn * size)
    for fraction in fractions:
        parent = rng.randrange(len(weights))
        depth.append(depth[parent] + 1)
        rewritten = set(rng.sample(range(size), round(fraction * size)))
        start = depth[-1] * slice_size
        rewritten.update(position % size for position in range(start, start + slice_size))
        child = list(weights[parent])
        for position in rewritten:
            child[position] = next(next_id)
        weights.append(child)
    names = [f"m{index}" for index in range(models)]
    popularity = list(range(1, models + 1))
    rng.shuffle(popularity)
    instance = Instance.from_models(
        dict(zip(names, weights, strict=True)),
        blocks_per_page,
        frequencies={name: 1.0 / rank for name, rank in zip(names, popularity, strict=True)},
    )
    label = "churn" if churn else "lineage"
    return replace(
        instance, name=f"{label}_{models}x{instance.distinct_blocks}_cap{blocks_per_page}"
    )
