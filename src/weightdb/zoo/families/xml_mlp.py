"""xml-mlp: extreme-classification MLPs with a very wide sparse input layer.

As in the netsDB paper's XML workload (up to 597,540 inputs x 1,000 hidden): a sparse input
vector (feature ids with weights) multiplies a (features x hidden) matrix, then ReLU and an
output layer over thousands of labels. A base and variants fine-tuned from it on other label
sets. Real XML data is not available offline, so examples come from a seeded generator: every
label has a prototype set of features, and an example mixes features of its label's prototype
with random noise features. Held-out examples cost nothing to generate, so the small build adds
enough of them (drawn after the training examples, which they leave unchanged) that validation
can verify an accuracy budget of 0.5% for every model: that takes 3 / 0.005 = 600 examples per
half of a split (see ``weightdb.dedup.group_test.RESOLVABLE_EXAMPLES``).
"""

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from weightdb.zoo.build import BuildContext
from weightdb.zoo.families import Family
from weightdb.zoo.manifest import Lineage, TaskEntry
from weightdb.zoo.record import record_model
from weightdb.zoo.splits import save_held_out, stratified_split
from weightdb.zoo.training import TrainConfig, freeze, train

IDS, WEIGHTS = "feature_ids", "feature_weights"
INPUT_LAYER = ("input", "input_bias")


class SparseInputMLP(nn.Module):
    """Weighted sum of input-layer rows of the active features, ReLU, output layer."""

    def __init__(self, features: int, hidden: int, labels: int) -> None:
        super().__init__()
        self.input = nn.Embedding(features, hidden, sparse=True)
        nn.init.normal_(self.input.weight, std=0.05)
        self.input_bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, labels)

    def forward(self, feature_ids: torch.Tensor, feature_weights: torch.Tensor) -> torch.Tensor:
        active = self.input(feature_ids) * feature_weights.unsqueeze(-1)
        return self.out(functional.relu(active.sum(1) + self.input_bias))


@dataclass(frozen=True)
class Shape:
    """Sizes of one build: features, hidden units, labels per model, label universe, data."""

    features: int
    hidden: int
    labels: int
    universe: int
    per_label: int
    active: int
    prototype: int
    held_out_per_label: int  # extra examples per label, half validation and half test


@dataclass(frozen=True)
class Variant:
    """A model: the window of the label universe it predicts, its parent, what is frozen."""

    name: str
    first: float  # window start as a fraction of the labels per model
    width: float  # window width as a fraction of the labels per model
    parent: str | None
    frozen: tuple[str, ...]
    steps_factor: float


VARIANTS = (
    Variant("base", 0.0, 1.0, None, (), 1.0),
    Variant("shifted-quarter", 0.25, 1.0, "base", (), 0.5),
    Variant("shifted-half-frozen-input", 0.5, 1.0, "base", INPUT_LAYER, 0.5),
    Variant("first-half-frozen-input", 0.0, 0.5, "base", INPUT_LAYER, 0.5),
    Variant("tail", 1.0, 0.5, "base", (), 0.5),
)


def _generate(shape: Shape, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Seeded examples (``per_label`` rows per label) and extra held-out ones
    (``held_out_per_label``), drawn from the same prototypes after the first, which they leave
    unchanged."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, shape.features, (shape.universe, shape.prototype))
    examples = _examples(shape, prototypes, shape.per_label, rng)
    return examples, _examples(shape, prototypes, shape.held_out_per_label, rng)


def _examples(
    shape: Shape, prototypes: np.ndarray, per_label: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``per_label`` rows per label, ``active`` weighted features each."""
    labels = np.repeat(np.arange(shape.universe), per_label)
    from_prototype = shape.active * 2 // 3
    picks = rng.integers(0, shape.prototype, (len(labels), from_prototype))
    ids = np.concatenate(
        [
            np.take_along_axis(prototypes[labels], picks, axis=1),
            rng.integers(0, shape.features, (len(labels), shape.active - from_prototype)),
        ],
        axis=1,
    )
    weights = (1.0 + rng.exponential(1.0, ids.shape)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return {IDS: ids.astype(np.int64), WEIGHTS: weights, "labels": labels}


def _splits(
    examples: dict[str, np.ndarray], held_out: dict[str, np.ndarray], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All examples, and train/validation/test indices into them: ``examples`` stratified as
    before, the extra held-out ones split evenly between validation and test."""
    indices = stratified_split(examples["labels"], seed)
    if not len(held_out["labels"]):
        return examples, indices
    offset = len(examples["labels"])
    extra = stratified_split(held_out["labels"], seed, fractions=(0.5, 0.5))
    for split in ("validation", "test"):
        indices[split] = np.concatenate([indices[split], offset + extra[split]])
    return {k: np.concatenate([examples[k], held_out[k]]) for k in examples}, indices


def build(context: BuildContext) -> dict[str, Any]:
    """Train the base on the first label window, then variants on other windows."""
    if context.full:
        shape = Shape(200_000, 1000, 4000, 6000, 8, 16, 24, 0)
        base_steps, batch = 2000, 256
    else:
        shape = Shape(2000, 32, 40, 60, 12, 8, 6, 120)
        base_steps, batch = 150, 32
    data, indices = _splits(*_generate(shape, context.seed), context.seed)
    inputs = {IDS: data[IDS], WEIGHTS: data[WEIGHTS]}
    trained: dict[str, SparseInputMLP] = {}
    windows: dict[str, np.ndarray] = {}
    tasks: dict[str, TaskEntry] = {}
    models = []
    for number, variant in enumerate(VARIANTS):
        first = round(variant.first * shape.labels)
        window = np.arange(first, first + round(variant.width * shape.labels))
        task = f"labels-{window[0]}-{window[-1]}"
        remap = np.full(shape.universe, -1)
        remap[window] = np.arange(len(window))
        keep = {s: rows[np.isin(data["labels"][rows], window)] for s, rows in indices.items()}
        held_out = save_held_out(context.directory, task, inputs, remap[data["labels"]], keep)
        tasks[task] = TaskEntry(
            name=task,
            source="seeded generator (weightdb.zoo.families.xml_mlp)",
            classes=[f"label-{label}" for label in window],
            synthetic=True,
            examples={s: len(rows) for s, rows in keep.items()},
            description=f"labels {window[0]}..{window[-1]} of a universe of {shape.universe}",
        )
        seed = context.seed * 1000 + number
        torch.manual_seed(seed)
        module = SparseInputMLP(shape.features, shape.hidden, len(window))
        if variant.parent is not None:
            parent = trained[variant.parent]
            module.input, module.input_bias = copy.deepcopy((parent.input, parent.input_bias))
            parent_rows = {label: row for row, label in enumerate(windows[variant.parent])}
            with torch.no_grad():
                for row, label in enumerate(window):
                    if label in parent_rows:
                        module.out.weight[row] = parent.out.weight[parent_rows[label]]
                        module.out.bias[row] = parent.out.bias[parent_rows[label]]
        freeze(module, variant.frozen)
        config = TrainConfig(round(base_steps * variant.steps_factor), batch, 3e-3, seed)
        rows = keep["train"]
        train(
            module,
            {name: torch.from_numpy(array[rows]) for name, array in inputs.items()},
            torch.from_numpy(remap[data["labels"][rows]]),
            config,
            context.reporter,
            f"xml-mlp {variant.name}",
            sparse_parameters=["input.weight"],
        )
        trained[variant.name] = module
        windows[variant.name] = window
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
                    "random" if variant.parent is None else "parent",
                    config.steps,
                    seed,
                    "adam+sparse_adam",
                    config.learning_rate,
                    batch,
                ),
                classes=tasks[task].classes,
                example_inputs={
                    IDS: torch.zeros(2, shape.active, dtype=torch.long),
                    WEIGHTS: torch.ones(2, shape.active),
                },
                dynamic_axes={
                    IDS: {0: "batch", 1: "active"},
                    WEIGHTS: {0: "batch", 1: "active"},
                    "logits": {0: "batch"},
                },
            )
        )
    return {
        "description": f"sparse-input MLPs: {shape.features} features x {shape.hidden} hidden x "
        f"{shape.labels} labels (base); variants fine-tuned from the base on other windows of a "
        f"{shape.universe}-label universe.",
        "shared_by_construction": "input.weight and input_bias equal the base's in the "
        "*-frozen-input variants; the other variants change only input rows of features their "
        "training examples use (sparse updates); output rows of labels a variant shares with the "
        "base start from the base's.",
        "synthetic": "inputs and labels: real extreme-classification data is not available "
        "offline, so examples come from a seeded prototype generator",
        "models": models,
        "tasks": list(tasks.values()),
        "extra": {"features": shape.features, "hidden": shape.hidden, "universe": shape.universe},
    }


FAMILY = Family(
    name="xml-mlp",
    summary="extreme-classification MLPs: very wide sparse input layer, variants on label sets",
    build=build,
)
