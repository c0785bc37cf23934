"""Quality metrics as per-example scores, so a gate can see which examples a change hurt.

Every metric yields one score per example, higher is better, plus the scale that turns score
differences into budget units: accuracy-like metrics use absolute points (a drop of 0.01 is one
percentage point), MSE uses the relative increase over the model's own error before the change.
"""

import re
from dataclasses import dataclass

import numpy as np

from weightdb.dedup.errors import EvalSpecError


@dataclass(frozen=True)
class Measurement:
    """A model's quality on one split: ``value`` is the metric as users know it."""

    value: float
    scores: np.ndarray  # per example, higher is better
    relative: bool = False  # drops are relative to the baseline's error (MSE)
    predictions: np.ndarray | None = None  # top-1 class per example, for classifiers

    def _scale(self, baseline: "Measurement") -> float:
        return max(abs(float(baseline.scores.mean())), 1e-12) if self.relative else 1.0

    def drop(self, baseline: "Measurement") -> float:
        """How much worse than ``baseline``, in budget units (negative if better)."""
        return float(baseline.scores.mean() - self.scores.mean()) / self._scale(baseline)

    def losses(self, baseline: "Measurement") -> float:
        """Mean per-example decrease, gains ignored: an upper bound of ``drop`` that does not let
        gains on some examples hide losses on others (what a gate on a small split needs)."""
        if self.scores.shape != baseline.scores.shape:
            return self.drop(baseline)
        decrease = np.maximum(baseline.scores - self.scores, 0.0)
        return float(decrease.mean()) / self._scale(baseline)

    def flips(self, baseline: "Measurement") -> float:
        """Share of examples whose predicted class changed, right or wrong: a change that moves
        an example across a decision boundary on validation without changing its correctness
        still warns that test examples near that boundary will flip. An upper bound of
        ``losses`` for classifiers (other metrics fall back to ``losses``)."""
        if self.predictions is None or baseline.predictions is None:
            return self.losses(baseline)
        return max(float(np.mean(self.predictions != baseline.predictions)), self.losses(baseline))


@dataclass(frozen=True)
class Metric:
    name: str
    k: int = 1

    def measure(self, outputs: np.ndarray, labels: np.ndarray) -> Measurement:
        if self.name == "mse":
            errors = (outputs.reshape(len(labels), -1) - labels.reshape(len(labels), -1)) ** 2
            per_example = errors.mean(axis=1, dtype=np.float64)
            return Measurement(float(per_example.mean()), -per_example, relative=True)
        if outputs.ndim != 2:
            raise EvalSpecError(
                f"metric {self.name} needs (examples, classes) outputs, got shape {outputs.shape}"
            )
        top = np.argsort(-outputs, axis=1, kind="stable")[:, : self.k]
        if self.name == "p@k":
            relevant = _relevant(labels, outputs.shape[1])
            scores = np.take_along_axis(relevant, top, axis=1).sum(axis=1) / self.k
        else:  # accuracy is top-1
            scores = (top == labels.reshape(-1, 1)).any(axis=1)
        scores = scores.astype(np.float64)
        return Measurement(float(scores.mean()), scores, predictions=top[:, 0])


def _relevant(labels: np.ndarray, classes: int) -> np.ndarray:
    """Multi-hot (examples, classes) from multi-hot labels or label lists padded with -1."""
    if labels.ndim == 2 and labels.shape[1] == classes and labels.max(initial=0) <= 1:
        return labels.astype(bool)
    lists = labels.reshape(len(labels), -1)
    relevant = np.zeros((len(labels), classes + 1), dtype=bool)
    np.put_along_axis(relevant, np.where(lists < 0, classes, lists), True, axis=1)
    return relevant[:, :classes]


_PATTERN = re.compile(r"^(accuracy|top-?(\d+)|p@(\d+)|mse)$")


def parse_metric(text: str) -> Metric:
    """``accuracy``, ``top-K``, ``P@K`` or ``MSE`` (case-insensitive)."""
    match = _PATTERN.match(str(text).strip().lower())
    if match is None:
        raise EvalSpecError(
            f"unknown metric {text!r}; use accuracy, top-K (e.g. top-5), P@K (e.g. P@5) or MSE"
        )
    if match.group(2):
        return Metric("accuracy", int(match.group(2)))
    if match.group(3):
        return Metric("p@k", int(match.group(3)))
    return Metric(match.group(1))
