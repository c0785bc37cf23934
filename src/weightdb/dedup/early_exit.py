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
            if self._measure(model, stop=True) is None:
                self.last_failure[model] = self.evaluations
                return False
        return True

    def _measure(self, model: str, stop: bool) -> Measurement | None:
        """The model measured now, chunk by chunk; None once ``stop`` and it is over budget.

        After each chunk the criterion is taken as if the examples not yet measured were
        unchanged: they add nothing to losses or flips, so that value only grows, and after the
        last chunk it is the criterion itself."""
        evaluator = self.evaluators[model]
        if not isinstance(evaluator, SplitEvaluator | ValidationHalf):
            measured = super().measure(model)  # a callable measures its own data, in one go
            return None if stop and not self._within_so_far(model, measured) else measured
        self.evaluations += 1
        inputs, labels = evaluator.load(self.split)
        metric = parse_metric(evaluator.metric)
        predict = self.workspace.predictor(model)
        outputs: list[np.ndarray] = []
        for rows in np.array_split(np.arange(len(labels)), min(CHUNKS, len(labels))):
            outputs.append(
                np.asarray(predict({name: array[rows] for name, array in inputs.items()}))
            )
            measured = metric.measure(np.concatenate(outputs), labels[: rows[-1] + 1])
            if stop and not self._within_so_far(model, measured):
                return None
        return measured

    def _within_so_far(self, model: str, measured: Measurement) -> bool:
        """Whether the examples of ``measured`` (the first ones of the split) have not already
        lost more than the whole split may."""
        base, done = self.baselines[model], len(measured.scores)
        predictions = (
            None
            if measured.predictions is None or base.predictions is None
            else np.concatenate([measured.predictions, base.predictions[done:]])
        )
        whole = dataclasses.replace(
            measured,
            scores=np.concatenate([measured.scores, base.scores[done:]]),
            predictions=predictions,
        )
        return self.within(model, getattr(whole, self.criterion)(base))
