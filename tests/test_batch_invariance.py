"""A row's outputs are bit-identical whatever batch it arrives in: alone, in chunks of any size,
shuffled among other rows, with one engine thread or two, weights streamed or in memory."""

from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import weightdb

SETTINGS = {
    "mlp": weightdb.Settings(block_rows=16, block_cols=16, page_size=4096),
    "cnn": weightdb.Settings(block_rows=4, block_cols=8, page_size=256),
    "text": weightdb.Settings(block_rows=16, block_cols=16, page_size=4096),
    "minilm": weightdb.Settings(block_rows=128, block_cols=128, page_size=1 << 20),
}
ROWS = {"mlp": 2100, "cnn": 2100, "text": 2100, "minilm": 70}
CHUNKS = {"mlp": (1, 7, 64, 2048), "cnn": (1, 7, 64, 2048), "text": (1, 7, 64, 2048)}
CHUNKS["minilm"] = (1, 7, 64)


def features(name: str, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    if name == "mlp":
        return {"x": rng.standard_normal((rows, 100), dtype=np.float32)}
    if name == "cnn":
        return {"x": rng.standard_normal((rows, 1, 8, 8), dtype=np.float32)}
    if name == "text":
        return {"ids": rng.integers(0, 1000, (rows, 9))}
    ids = rng.integers(1000, 30522, (rows, 16))
    mask = np.ones_like(ids)
    mask[::3, 10:] = 0  # padded rows too
    return {"input_ids": ids, "attention_mask": mask}


def take(feeds: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
    return {key: value[rows] for key, value in feeds.items()}


@pytest.fixture(scope="module")
def databases(tmp_path_factory, exported_models, minilm_onnx) -> dict[str, Path]:
    sources = {**exported_models, "minilm": minilm_onnx}
    paths = {}
    for name, source in sources.items():
        paths[name] = tmp_path_factory.mktemp("invariance") / name
        with weightdb.connect(paths[name], settings=SETTINGS[name]) as db:
            db.import_model(source, name=name)
    return paths


@pytest.mark.parametrize("name", ["mlp", "cnn", "text", "minilm"])
def test_every_batching_gives_the_same_bits(databases, name):
    rows = ROWS[name]
    feeds = features(name, rows)
    with weightdb.connect(databases[name], budget=None) as db:
        output = db.prepared.get(name).outputs[0]
        quarter = db.model(name).logical_bytes // 4

        def predict(selection) -> np.ndarray:
            return db.predict(name, take(feeds, selection))[output]

        everything = predict(slice(None))
        for size in CHUNKS[name]:
            # Chunks of ``size`` over a prefix, so batch 1 does not cost thousands of calls.
            stop = min(rows, max(size * 3, 2 * size + 5))
            chunked = np.concatenate(
                [predict(slice(s, min(s + size, stop))) for s in range(0, stop, size)]
            )
            assert chunked.tobytes() == everything[:stop].tobytes(), f"chunks of {size}"
        order = np.random.default_rng(5).permutation(rows)
        assert predict(order).tobytes() == everything[order].tobytes(), "shuffled"
        with threadpoolctl.threadpool_limits(1):
            assert predict(slice(None)).tobytes() == everything.tobytes(), "one thread"
    with weightdb.connect(databases[name], budget=quarter) as db:
        streamed = db.predict(name, feeds)[output]
        assert db.pool.stats().evictions > 0
    assert streamed.tobytes() == everything.tobytes(), "a quarter of the model in the pool"


def test_without_batch_invariance_outputs_still_match_closely(databases):
    """The opt-out computes the same function, only with the batch's own BLAS shapes."""
    feeds = features("mlp", 300)
    with weightdb.connect(databases["mlp"], budget=None) as db:
        invariant = db.predict("mlp", feeds)["output"]
    with weightdb.connect(databases["mlp"], budget=None, batch_invariant=False) as db:
        fast = db.predict("mlp", feeds)["output"]
        lone = db.predict("mlp", take(feeds, slice(0, 1)))["output"]
    np.testing.assert_allclose(fast, invariant, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lone[0], invariant[0], rtol=1e-5, atol=1e-6)
