"""family.json: the record of a built family, read by import, deduplication and benchmarks.

Paths inside are relative to family.json so a family directory can be moved or copied whole.
Deduplication takes it as its evaluation spec: each model names its validation and test split
files, the metric and the accuracy measured by onnxruntime on them.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "family.json"


@dataclass(frozen=True)
class Lineage:
    """How one model came to be: where its weights started and how it was trained."""

    init: str  # "random", "parent" or "pretrained:<what>"
    steps: int
    seed: int
    optimizer: str = ""
    learning_rate: float = 0.0
    batch_size: int = 0


@dataclass(frozen=True)
class ModelEntry:
    """One model of a family, as family.json lists it."""

    name: str
    onnx: str
    safetensors: str
    parent: str | None
    frozen: list[str]
    task: str
    validation: str | None
    test: str | None
    metric: str | None
    accuracy: dict[str, float | None]
    lineage: Lineage
    parameters: int
    bytes: int
    classes: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True)
class TaskEntry:
    """A labelled task some models of the family were trained on."""

    name: str
    source: str
    classes: list[str]
    synthetic: bool
    examples: dict[str, int]
    description: str = ""


@dataclass(frozen=True)
class FamilyManifest:
    """Everything family.json holds."""

    name: str
    size: str
    seed: int
    cache_key: str
    description: str
    shared_by_construction: str
    synthetic: str
    models: list[ModelEntry]
    tasks: list[TaskEntry]
    options: dict[str, Any] = field(default_factory=dict)
    built_with: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def write_manifest(directory: Path, manifest: FamilyManifest) -> Path:
    """Write family.json into ``directory`` and return its path."""
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed family.json of a built family directory (plain JSON, as other tools see it)."""
    return json.loads((directory / MANIFEST_NAME).read_text())
