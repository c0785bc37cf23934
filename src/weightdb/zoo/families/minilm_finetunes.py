"""minilm-finetunes: fine-tunes of the pretrained MiniLM-L6 sentence encoder on several tasks.

Per task one full fine-tune and one with the embeddings and the lower k encoder layers frozen;
each adds a linear classification head over the mean-pooled token states. Frozen parts equal the
pretrained weights in every model that froze them. With ``long_steps`` set, one more full
fine-tune of the first task trains that many steps: what users' fine-tunes look like, for the
lossless tier's measurements (the others take a few steps to keep tests fast).
"""

from typing import Any

import torch
from torch import nn

from weightdb.zoo.build import BuildContext
from weightdb.zoo.families import Family
from weightdb.zoo.manifest import Lineage
from weightdb.zoo.minilm import PRETRAINED, load_encoder
from weightdb.zoo.record import record_model
from weightdb.zoo.text import TEXT_AXES, TEXT_EXAMPLE, WORDNET_DIR, load_tasks, prepare
from weightdb.zoo.training import TrainConfig, freeze, train


class SentenceClassifier(nn.Module):
    """The encoder, mean pooling over real tokens (as sentence-transformers does), a head."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return self.head((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9))


def frozen_prefixes(layers: int) -> list[str]:
    """Module names frozen when the lower ``layers`` encoder layers are frozen."""
    return ["encoder.embeddings"] + [f"encoder.encoder.layer.{i}" for i in range(layers)]


def build(context: BuildContext) -> dict[str, Any]:
    """Two fine-tunes per task: everything trainable, and the lower k layers frozen."""
    full = context.full
    per_class, max_length = (1000, 48) if full else (60, 16)
    steps, batch, lower = (200, 16, 4) if full else (8, 16, 3)
    # Small splits hold 24-60 examples: too few to verify a 0.5% accuracy budget, which takes
    # 600 (see weightdb.dedup's RESOLVABLE_EXAMPLES). Validation grows with texts the cap left.
    validation = 0 if full else 600
    tasks = prepare(context, load_tasks(context), per_class, max_length, validation)
    runs = [
        (number, task, layers, steps, offset)
        for number, task in enumerate(tasks)
        for offset, layers in enumerate((0, lower))
    ]
    if context.options["long_steps"]:
        runs.append((0, tasks[0], 0, context.options["long_steps"], 2 * len(tasks)))
    models = []
    for number, task, layers, steps, offset in runs:
        inputs, labels = task.train_data()
        name = f"{task.entry.name}-full" if layers == 0 else f"{task.entry.name}-lower{layers}"
        name += f"-{steps}steps" if offset == 2 * len(tasks) else ""
        seed = context.seed * 1000 + 2 * number + offset
        torch.manual_seed(seed)
        module = SentenceClassifier(load_encoder(), len(task.entry.classes))
        frozen = freeze(module, frozen_prefixes(layers)) if layers else []
        config = TrainConfig(steps, batch, 5e-5 if layers == 0 else 1e-4, seed)
        train(module, inputs, labels, config, context.reporter, f"minilm-finetunes {name}")
        models.append(
            record_model(
                context,
                module,
                name=name,
                parent=None,
                frozen=frozen,
                task=task.entry.name,
                held_out=task.held_out,
                lineage=Lineage(
                    f"pretrained:{PRETRAINED}", steps, seed, "adam", config.learning_rate, batch
                ),
                classes=task.entry.classes,
                example_inputs=TEXT_EXAMPLE,
                dynamic_axes=TEXT_AXES,
            )
        )
    return {
        "description": "MiniLM-L6 (all-MiniLM-L6-v2) fine-tuned per task with a linear head on "
        "mean-pooled states: a full fine-tune and one with the lower layers frozen.",
        "shared_by_construction": "in every *-lower<k> model encoder.embeddings.* and encoder "
        "layers 0..k-1 equal the pretrained weights (and each other); full fine-tunes leave "
        "embedding rows of unseen tokens bit-identical (Adam, no weight decay).",
        "synthetic": "nothing: texts and labels are real (see tasks), the encoder is pretrained",
        "models": models,
        "tasks": [task.entry for task in tasks],
        "extra": {"pretrained": PRETRAINED},
    }


FAMILY = Family(
    name="minilm-finetunes",
    summary="fine-tunes of pretrained MiniLM-L6: full and lower-k-frozen, on several text tasks",
    build=build,
    defaults={"small": {"long_steps": 0}, "full": {"wordnet": WORDNET_DIR, "long_steps": 0}},
)
