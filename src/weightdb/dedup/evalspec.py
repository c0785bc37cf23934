"""Evaluation specs: per model, held-out labelled data and a metric, or a Python callable.

On the CLI a spec is a zoo ``family.json`` or any JSON file of that shape::

    {"models": [{"name": "m", "validation": "val.npz", "test": "test.npz", "metric": "accuracy"}]}

Split files are npz with the graph inputs under their input names and the targets under
``labels``; relative paths are relative to the JSON file. In Python a spec may also map model
names to callables ``fn(predict, split) -> float`` (higher is better; split is "validation" or
"test"). Models the spec does not name are never changed approximately.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from weightdb.dedup.errors import EvalSpecError
from weightdb.dedup.metrics import Measurement, Metric, parse_metric

Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]
"""Runs the model under evaluation on named inputs and returns its first output."""

SPLITS = ("validation", "test")
LABELS = "labels"


class Evaluator(Protocol):
    metric: str

    def measure(self, predict: Predict, split: str) -> Measurement: ...

    def inputs(self, split: str) -> Mapping[str, np.ndarray] | None:
        """The graph inputs of ``split``, or None when the evaluator does not expose them."""
        ...


@dataclass
class SplitEvaluator:
    """A metric over labelled npz splits, loaded once and kept in memory."""

    metric: str
    paths: dict[str, Path]
    _metric: Metric = field(init=False)
    _splits: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._metric = parse_metric(self.metric)

    def load(self, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if split not in self._splits:
            path = self.paths[split]
            try:
                with np.load(path) as data:
                    arrays = {name: data[name] for name in data.files}
            except (OSError, ValueError) as error:
                raise EvalSpecError(f"cannot read the {split} split {path}: {error}") from None
            if LABELS not in arrays:
                raise EvalSpecError(
                    f"{path} has no {LABELS!r} array; a split holds the graph inputs under their "
                    f"names and the targets under {LABELS!r}"
                )
            labels = arrays.pop(LABELS)
            self._splits[split] = (arrays, labels)
        return self._splits[split]

    def measure(self, predict: Predict, split: str) -> Measurement:
        inputs, labels = self.load(split)
        return self._metric.measure(np.asarray(predict(inputs)), labels)

    def inputs(self, split: str) -> Mapping[str, np.ndarray]:
        return self.load(split)[0]


@dataclass
class CallableEvaluator:
    """A user's function ``fn(predict, split) -> float``, higher is better."""

    fn: Callable[[Predict, str], float]
    metric: str = "callable"

    def measure(self, predict: Predict, split: str) -> Measurement:
        value = float(self.fn(predict, split))
        return Measurement(value, np.array([value]))

    def inputs(self, split: str) -> None:
        return None  # the function reads its own data


EvalSpec = None | str | Path | Mapping[str, Any]


def load_eval_spec(spec: EvalSpec, models: list[str]) -> dict[str, Evaluator]:
    """The evaluator of every model in ``models`` that the spec covers (others are absent)."""
    if spec is None:
        return {}
    base = Path(".")
    if isinstance(spec, str | Path):
        path = Path(spec)
        if not path.is_file():
            raise EvalSpecError(
                f"eval spec {path} does not exist; pass a family.json or a JSON "
                "file listing models with validation, test and metric"
            )
        try:
            spec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise EvalSpecError(f"eval spec {path} is not valid JSON: {error}") from None
        base = path.parent
    entries = _entries(spec)
    evaluators = {}
    for name, entry in entries.items():
        if name not in models:
            continue
        evaluator = _evaluator(name, entry, base)
        if evaluator is not None:
            evaluators[name] = evaluator
    if entries and not any(name in models for name in entries):
        raise EvalSpecError(
            f"the eval spec names none of the models being deduplicated ({', '.join(models)}); "
            f"it names {', '.join(sorted(entries)[:10])}"
        )
    return evaluators


def _entries(spec: Any) -> dict[str, Any]:
    if isinstance(spec, Mapping) and "models" in spec:
        listed = spec["models"]
        if not isinstance(listed, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in listed
        ):
            raise EvalSpecError("the eval spec's 'models' must be a list of objects with a 'name'")
        return {e["name"]: e for e in listed}
    if isinstance(spec, Mapping):
        return dict(spec)  # Python: name -> callable or entry
    raise EvalSpecError(
        "an eval spec is a path to a JSON file, a dict with a 'models' list, or a dict of model "
        f"name -> callable; got {type(spec).__name__}"
    )


def _evaluator(name: str, entry: Any, base: Path) -> Evaluator | None:
    if callable(entry):
        return CallableEvaluator(entry)
    if not isinstance(entry, Mapping):
        raise EvalSpecError(f"eval spec entry of {name!r} must be an object or a callable")
    if entry.get("metric") is None:
        return None  # e.g. the zoo's untrained scale family: nothing to measure, never changed
    missing = [key for key in SPLITS if not entry.get(key)]
    if missing:
        raise EvalSpecError(
            f"eval spec entry of {name!r} has no {' or '.join(missing)} split; each model needs "
            "both a validation split (for decisions) and a test split (for the report)"
        )
    paths = {split: base / entry[split] for split in SPLITS}
    for split, path in paths.items():
        if not path.is_file():
            raise EvalSpecError(f"the {split} split of {name!r} ({path}) does not exist")
    return SplitEvaluator(str(entry["metric"]), paths)
