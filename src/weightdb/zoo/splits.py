"""Train/validation/test splits, stratified and seeded, saved as npz beside the models.

A split file holds the model inputs under the ONNX graph input names and the class labels under
``labels``, so any tool can feed it straight into onnxruntime.
"""

from collections.abc import Mapping
from pathlib import Path

import numpy as np

LABELS = "labels"
SPLITS = ("train", "validation", "test")


def stratified_split(
    labels: np.ndarray, seed: int, fractions: tuple[float, float] = (0.2, 0.2)
) -> dict[str, np.ndarray]:
    """Indices of train, validation and test, each class cut in the same proportions."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(members) * fractions[0]))
        n_test = max(1, round(len(members) * fractions[1]))
        parts["validation"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def save_split(path: Path, inputs: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
    """Write one split; ``inputs`` are keyed by ONNX input name."""
    if LABELS in inputs:
        raise ValueError(f"an input may not be called {LABELS!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **inputs, **{LABELS: labels})


def load_split(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs (by ONNX input name) and labels of a saved split."""
    with np.load(path) as data:
        inputs = {name: data[name] for name in data.files if name != LABELS}
        return inputs, data[LABELS]


def save_held_out(
    directory: Path,
    task: str,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    indices: Mapping[str, np.ndarray],
) -> dict[str, str]:
    """Save the validation and test rows of a task; return their paths relative to ``directory``."""
    paths = {}
    for split in ("validation", "test"):
        rows = indices[split]
        relative = f"data/{task}-{split}.npz"
        save_split(directory / relative, {k: v[rows] for k, v in inputs.items()}, labels[rows])
        paths[split] = relative
    return paths
