"""text-embedding: text classifiers made of a pretrained embedding plus a dense head.

The netsDB paper's main workload. Each task gets a model trained with the pretrained MiniLM
token embedding frozen (only the head learns), and a fine-tune of it with the embedding
trainable. Frozen-embedding models of all tasks share the whole embedding exactly; tuned ones
change only the rows of tokens their training texts use (sparse updates).
"""

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from weightdb.zoo.build import BuildContext
from weightdb.zoo.families import Family
from weightdb.zoo.manifest import Lineage
from weightdb.zoo.minilm import PRETRAINED, word_embeddings
from weightdb.zoo.record import record_model
from weightdb.zoo.text import TEXT_AXES, TEXT_EXAMPLE, WORDNET_DIR, load_tasks, prepare
from weightdb.zoo.training import TrainConfig, freeze, train

EMBEDDING = "embedding"


class EmbeddingBagClassifier(nn.Module):
    """Masked mean of token embeddings (an embedding bag), then Linear-ReLU-Linear."""

    def __init__(self, embedding: torch.Tensor, hidden: int, classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(embedding.clone(), freeze=False, sparse=True)
        self.hidden = nn.Linear(embedding.shape[1], hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.out(functional.relu(self.hidden(pooled)))


def build(context: BuildContext) -> dict[str, Any]:
    """Per task: a frozen-embedding model, then its fine-tune with the embedding trainable."""
    full = context.full
    hidden, per_class, max_length = (256, 2000, 48) if full else (64, 120, 24)
    steps, batch = (1500, 64) if full else (120, 32)
    tasks = prepare(context, load_tasks(context), per_class, max_length)
    embedding = word_embeddings()
    models = []
    for number, task in enumerate(tasks):
        inputs, labels = task.train_data()
        classes = task.entry.classes
        frozen_name, tuned_name = f"{task.entry.name}-frozen", f"{task.entry.name}-tuned"
        plans = (
            (frozen_name, None, [EMBEDDING], steps, f"pretrained:{PRETRAINED} word embeddings"),
            (tuned_name, frozen_name, [], steps // 2, "parent"),
        )
        module = None
        for offset, (name, parent, frozen, model_steps, init) in enumerate(plans):
            seed = context.seed * 1000 + 2 * number + offset
            torch.manual_seed(seed)
            if module is None:
                module = EmbeddingBagClassifier(embedding, hidden, len(classes))
            else:
                module = copy.deepcopy(module)
                module.embedding.weight.requires_grad_(True)
            freeze(module, frozen)
            config = TrainConfig(model_steps, batch, 2e-3, seed)
            train(
                module,
                inputs,
                labels,
                config,
                context.reporter,
                f"text-embedding {name}",
                sparse_parameters=[f"{EMBEDDING}.weight"],
            )
            models.append(
                record_model(
                    context,
                    module,
                    name=name,
                    parent=parent,
                    frozen=frozen,
                    task=task.entry.name,
                    held_out=task.held_out,
                    lineage=Lineage(init, config.steps, seed, "adam+sparse_adam", 2e-3, batch),
                    classes=classes,
                    example_inputs=TEXT_EXAMPLE,
                    dynamic_axes=TEXT_AXES,
                )
            )
    return {
        "description": "embedding-bag text classifiers over MiniLM-L6's pretrained token "
        "embedding (30522 x 384): per task a frozen-embedding model and its fine-tune with the "
        "embedding trainable.",
        "shared_by_construction": "embedding.weight is identical in every *-frozen model (the "
        "pretrained matrix); each *-tuned model changes only the embedding rows of tokens in its "
        "training texts and keeps the rest bit-identical.",
        "synthetic": "nothing: texts and labels are real (see tasks), the embedding is pretrained",
        "models": models,
        "tasks": [task.entry for task in tasks],
    }


FAMILY = Family(
    name="text-embedding",
    summary="pretrained MiniLM token embedding + dense head, frozen and tuned, several text tasks",
    build=build,
    defaults={"small": {}, "full": {"wordnet": WORDNET_DIR}},
)
