"""Turn a trained torch module into files plus its family.json entry, accuracy measured by ORT."""

from collections.abc import Mapping, Sequence

import torch

from weightdb.zoo.build import BuildContext
from weightdb.zoo.export import export_model, measure_accuracy
from weightdb.zoo.manifest import Lineage, ModelEntry


def record_model(
    context: BuildContext,
    module: torch.nn.Module,
    *,
    name: str,
    parent: str | None,
    frozen: Sequence[str],
    task: str,
    held_out: Mapping[str, str],
    lineage: Lineage,
    classes: Sequence[str],
    example_inputs: Mapping[str, torch.Tensor],
    dynamic_axes: Mapping[str, dict[int, str]],
) -> ModelEntry:
    """Export ``module`` as ``name`` and measure its accuracy on the task's held-out splits."""
    exported = export_model(module, example_inputs, context.directory, name, dynamic_axes)
    onnx_path = context.directory / exported.onnx
    accuracy = {
        split: measure_accuracy(onnx_path, context.directory / held_out[split])
        for split in ("validation", "test")
    }
    return ModelEntry(
        name=name,
        onnx=exported.onnx,
        safetensors=exported.safetensors,
        parent=parent,
        frozen=list(frozen),
        task=task,
        validation=held_out["validation"],
        test=held_out["test"],
        metric="accuracy",
        accuracy=accuracy,
        lineage=lineage,
        parameters=exported.parameters,
        bytes=exported.bytes,
        classes=list(classes),
    )
