"""digits-cnn: small CNNs on scikit-learn's bundled 8x8 digits, a base and fine-tuned variants.

Variants re-train the base on class subsets (with a new output layer), with the conv layers
frozen or not, or for extra epochs, so conv kernels are shared exactly where frozen.
"""

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional

from weightdb.zoo.build import BuildContext
from weightdb.zoo.families import Family
from weightdb.zoo.manifest import Lineage, TaskEntry
from weightdb.zoo.record import record_model
from weightdb.zoo.splits import save_held_out, stratified_split
from weightdb.zoo.training import TrainConfig, freeze, train

INPUT = "pixels"
CONV = ("conv1", "conv2")


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and two dense layers."""

    def __init__(self, channels: tuple[int, int], hidden: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.fc1 = nn.Linear(channels[1] * 16, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = functional.max_pool2d(
            functional.relu(self.conv2(functional.relu(self.conv1(pixels)))), 2
        )
        return self.fc2(functional.relu(self.fc1(x.flatten(1))))


@dataclass(frozen=True)
class Variant:
    """One planned model: its class subset, what it starts from and what stays frozen."""

    name: str
    digits: tuple[int, ...]
    parent: str | None
    frozen: tuple[str, ...]
    steps_factor: float


ALL = tuple(range(10))
VARIANTS = (
    Variant("base", ALL, None, (), 1.0),
    Variant("base-extra-epochs", ALL, "base", (), 0.5),
    Variant("frozen-conv", ALL, "base", CONV, 0.5),
    Variant("digits-0-4-frozen-conv", (0, 1, 2, 3, 4), "base", CONV, 0.5),
    Variant("digits-5-9", (5, 6, 7, 8, 9), "base", (), 0.5),
    Variant("even-digits-frozen-conv", (0, 2, 4, 6, 8), "base", CONV, 0.5),
)


def _task_name(digits: tuple[int, ...]) -> str:
    return "digits-" + "".join(str(d) for d in digits)


def build(context: BuildContext) -> dict[str, Any]:
    """Train the base, then each variant from it; save per-subset held-out splits."""
    full = context.full
    channels, hidden = ((32, 64), 128) if full else ((8, 16), 32)
    base_steps, batch = (1200, 64) if full else (150, 32)
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    labels = data.target.astype(np.int64)
    indices = stratified_split(labels, context.seed)
    trained: dict[str, DigitsCNN] = {}
    tasks: dict[str, TaskEntry] = {}
    models = []
    for number, variant in enumerate(VARIANTS):
        task = _task_name(variant.digits)
        remap = np.full(10, -1)
        remap[list(variant.digits)] = np.arange(len(variant.digits))
        keep = {s: rows[np.isin(labels[rows], variant.digits)] for s, rows in indices.items()}
        held_out = save_held_out(context.directory, task, {INPUT: images}, remap[labels], keep)
        tasks[task] = TaskEntry(
            name=task,
            source="sklearn.datasets.load_digits (bundled with scikit-learn)",
            classes=[str(d) for d in variant.digits],
            synthetic=False,
            examples={s: len(rows) for s, rows in keep.items()},
            description="classify 8x8 handwritten digit images",
        )
        seed = context.seed * 1000 + number
        torch.manual_seed(seed)
        if variant.parent is None:
            module = DigitsCNN(channels, hidden, len(variant.digits))
        else:
            module = copy.deepcopy(trained[variant.parent])
            if len(variant.digits) != module.fc2.out_features or variant.digits != ALL:
                module.fc2 = nn.Linear(hidden, len(variant.digits))
        freeze(module, variant.frozen)
        config = TrainConfig(round(base_steps * variant.steps_factor), batch, 3e-3, seed)
        rows = keep["train"]
        train(
            module,
            {INPUT: torch.from_numpy(images[rows])},
            torch.from_numpy(remap[labels[rows]]),
            config,
            context.reporter,
            f"digits-cnn {variant.name}",
        )
        trained[variant.name] = module
        models.append(
            record_model(
                context,
                module,
                name=variant.name,
                parent=variant.parent,
                frozen=variant.frozen,
                task=task,
                held_out=held_out,
                lineage=Lineage(
                    init="random" if variant.parent is None else "parent",
                    steps=config.steps,
                    seed=seed,
                    optimizer="adam",
                    learning_rate=config.learning_rate,
                    batch_size=batch,
                ),
                classes=[str(d) for d in variant.digits],
                example_inputs={INPUT: torch.zeros(1, 1, 8, 8)},
                dynamic_axes={INPUT: {0: "batch"}, "logits": {0: "batch"}},
            )
        )
    return {
        "description": "CNNs on scikit-learn's 8x8 digits: a base and variants fine-tuned from "
        "it on class subsets, with conv layers frozen or not, or for extra steps.",
        "shared_by_construction": "conv1.* and conv2.* of every *-frozen-conv variant equal the "
        "base's; nothing else is shared exactly.",
        "synthetic": "nothing: images and labels are scikit-learn's bundled digits",
        "models": models,
        "tasks": list(tasks.values()),
    }


FAMILY = Family(
    name="digits-cnn",
    summary="small CNNs on scikit-learn digits: class-subset, frozen-conv, extra-epoch variants",
    build=build,
)
