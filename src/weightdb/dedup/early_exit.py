"""A gate that stops measuring a model as soon as its losses are over budget.

Per-example losses (and prediction flips) only add up as more examples are measured: once the
examples measured so far have lost more than the budget allows for the whole split, measuring
the rest cannot bring the model back within it. Group testing spends most of its evaluations on
batches that fail (bisecting a failed batch), and a batch far over budget shows within the first
part of the split. The split is measured in ``CHUNKS`` consecutive parts, each an ordinary run of
the model, the baseline too, so a model is compared with itself run the same way. Models are
checked starting with the one that failed most recently, the likeliest to fail again.
"""

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from weightdb.dedup.evalspec import SplitEvaluator
from weightdb.dedup.gate import Gate
from weightdb.dedup.heldout import ValidationHalf
from weightdb.dedup.metrics import Measurement, parse_metric

CHUNKS = 8
MONOTONE = ("losses", "flips")
"""Criteria that only grow with examples measured; ``drop`` nets gains against losses."""


@dataclass
class EarlyExitGate(Gate):
    """``Gate`` with the same verdicts, reached with fewer examples run when a model fails."""

    last_failure: dict[str, int] = field(default_factory=dict, init=False)
    """Model -> ``evaluations`` when it last failed."""

    @classmethod
    def around(cls, gate: Gate) -> "EarlyExitGate":
        """A gate deciding as ``gate`` does, with baselines of its own (measured in chunks)."""
        fields = {f.name: getattr(gate, f.name) for f in dataclasses.fields(Gate)}
        return cls(**fields | {"baselines": {}})

    def measure(self, model: str) -> Measurement:
        return self._measure(model, stop=False)

    def passes(self, models: Iterable[str]) -> bool:
        if self.criterion not in MONOTONE:
            return super().passes(models)
        for model in sorted(models, key=lambda m: (-self.last_failure.get(m, -1), m)):
            self.baseline(model)
            measured = self._measure(model, stop=True)
            if measured is None or not self.within(model, self._criterion(measured, model)):
                self.last_failure[model] = self.evaluations
                return False
        return True

    def _criterion(self, measured: Measurement, model: str) -> float:
        return getattr(measured, self.criterion)(self.baselines[model])

    def _measure(self, model: str, stop: bool) -> Measurement | None:
        """The model measured now, chunk by chunk; None once ``stop`` and it is over budget."""
        evaluator = self.evaluators[model]
        if not isinstance(evaluator, SplitEvaluator | ValidationHalf):
            return super().measure(model)  # a callable measures its own data, in one go
        self.evaluations += 1
        inputs, labels = evaluator.load(self.split)
        metric = parse_metric(evaluator.metric)
        predict = self.workspace.predictor(model)
        parts: list[Measurement] = []
        for rows in np.array_split(np.arange(len(labels)), min(CHUNKS, len(labels))):
            outputs = predict({name: array[rows] for name, array in inputs.items()})
            parts.append(metric.measure(np.asarray(outputs), labels[rows]))
            if stop and self._over_budget(model, parts, len(labels)):
                return None
        return _joined(parts)

    def _over_budget(self, model: str, parts: list[Measurement], examples: int) -> bool:
        """Whether the examples measured so far already lost more than the whole split may."""
        base = self.baselines[model]
        done = sum(len(p.scores) for p in parts)
        scores = np.concatenate([p.scores for p in parts])
        decrease = np.maximum(base.scores[:done] - scores, 0.0).sum()
        scale = max(abs(float(base.scores.mean())), 1e-12) if base.relative else 1.0
        lost = decrease / examples / scale
        if self.criterion == "flips" and base.predictions is not None:
            changed = np.concatenate([p.predictions for p in parts]) != base.predictions[:done]
            lost = max(lost, changed.sum() / examples)
        return not self.within(model, lost)


def _joined(parts: list[Measurement]) -> Measurement:
    """One measurement of a split measured in consecutive parts."""
    scores = np.concatenate([p.scores for p in parts])
    relative = parts[0].relative
    predictions = (
        None
        if any(p.predictions is None for p in parts)
        else np.concatenate([p.predictions for p in parts])
    )
    # A metric's value is its mean score, except MSE, whose scores are negated errors.
    value = -float(scores.mean()) if relative else float(scores.mean())
    return Measurement(value, scores, relative, predictions)
