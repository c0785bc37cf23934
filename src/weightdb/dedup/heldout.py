"""Halves of a validation split: one to plan on, one held out to audit the plan once.

Changing an embedding row no validation example reads is invisible to validation (``coverage``),
yet such rows are where most of an embedding family's savings are: on text-embedding, 44-86% of
validation examples read a row no other example reads, and a test example reads a row validation
never read just as often. Whether changing them is safe is still a question validation can
answer, when split. A plan made on the planning half, free to change rows that half never reads,
is then measured once on the audit half. Relative to that plan, an audit example is a fresh draw
from the same data as a test example: it reads rows the planning half never saw as often as a
test example reads rows validation never saw, so its change estimates the test change of the
plan without bias, unread rows included. It is measured once, so the plan cannot have been
selected to pass it.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from weightdb.dedup.evalspec import Predict, SplitEvaluator
from weightdb.dedup.metrics import Measurement, parse_metric

PLANNING, AUDIT = 0, 1


@dataclass
class ValidationHalf:
    """One half of a ``SplitEvaluator``'s validation split, served as its validation split."""

    evaluator: SplitEvaluator
    rows: np.ndarray

    def __post_init__(self) -> None:
        # Cut once: the gate measures a half after every batch it tries.
        inputs, labels = self.evaluator.load("validation")
        self._inputs = {name: array[self.rows] for name, array in inputs.items()}
        self._labels = labels[self.rows]
        self._metric = parse_metric(self.evaluator.metric)

    @property
    def metric(self) -> str:
        return self.evaluator.metric

    def measure(self, predict: Predict, split: str) -> Measurement:
        return self._metric.measure(np.asarray(predict(self.inputs(split))), self._labels)

    def inputs(self, split: str) -> Mapping[str, np.ndarray]:
        return self.load(split)[0]

    def load(self, split: str) -> tuple[Mapping[str, np.ndarray], np.ndarray]:
        """Inputs and labels of this half, as ``SplitEvaluator.load`` gives a split's."""
        if split != "validation":
            raise ValueError(f"a validation half only measures validation, not {split!r}")
        return self._inputs, self._labels


def halves(evaluator: object, seed: int) -> tuple[ValidationHalf, ValidationHalf] | None:
    """The planning and audit halves of ``evaluator``'s validation split, drawn at random (the
    split may be ordered by label); None when it cannot be split (a callable evaluator, or
    inputs whose first axis is not the examples)."""
    if not isinstance(evaluator, SplitEvaluator):
        return None
    inputs, labels = evaluator.load("validation")
    if any(len(array) != len(labels) for array in inputs.values()) or len(labels) < 2:
        return None
    order = np.random.default_rng(seed).permutation(len(labels))
    middle = len(labels) // 2
    return ValidationHalf(evaluator, np.sort(order[:middle])), ValidationHalf(
        evaluator, np.sort(order[middle:])
    )
