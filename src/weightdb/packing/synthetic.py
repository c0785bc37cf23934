"""Synthetic instances shaped like a model zoo, for tests and benchmarks at any size.

Models come in families of fine-tunes of one base model. Each fine-tune freezes the first few
of the base's layers (shared with every sibling that freezes at least as deep) and retrains the
rest (private blocks); all models also share one embedding. Popularity follows Zipf's law.
"""

import random

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
