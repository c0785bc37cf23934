"""The accuracy gate: is every given model still within its budget on the decision split?"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from weightdb.dedup.evalspec import Evaluator
from weightdb.dedup.metrics import Measurement
from weightdb.dedup.workspace import Workspace


@dataclass
class Gate:
    """``criterion`` names a ``Measurement`` comparison: "drop" (the metric itself, as netsDB
    checks it), "losses" (per-example decreases only, so gains on some examples cannot mask
    losses on others) or "flips" (any change of predicted class); a model passes while the
    criterion is at most ``margin`` times its budget."""

    workspace: Workspace
    evaluators: dict[str, Evaluator]
    budgets: dict[str, float]
    split: str
    criterion: str = "drop"
    margin: float = 1.0
    evaluations: int = 0
    baselines: dict[str, Measurement] = field(default_factory=dict)

    def baseline(self, model: str) -> Measurement:
        """The model's quality before this run (measured on the snapshot's own blocks)."""
        if model not in self.baselines:
            self.baselines[model] = self.measure(model)
        return self.baselines[model]

    def measure(self, model: str) -> Measurement:
        self.evaluations += 1
        return self.workspace.measure(model, self.evaluators[model], self.split)

    def change(self, model: str) -> float:
        """The criterion's change of ``model`` from its baseline, measured now."""
        base = self.baseline(model)
        return getattr(self.measure(model), self.criterion)(base)

    def within(self, model: str, change: float) -> bool:
        return change <= self.margin * self.budgets[model] + 1e-12

    def passes(self, models: Iterable[str]) -> bool:
        return all(self.within(model, self.change(model)) for model in sorted(models))
