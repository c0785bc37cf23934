"""PyTorch modules in: exported to ONNX with ``torch.onnx.export``, then imported as ONNX.

The TorchScript-based exporter (``dynamo=False``) is used because it needs nothing beyond
torch itself and produces plain opset-17 graphs the engine covers; the batch dimension of
every input and output is left free.
"""

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from weightdb.ingest.torch_format import require_torch

OPSET = 17


def export_to_onnx(
    module,
    example_inputs: Sequence,
    path: Path,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    *,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    fold_constants: bool = True,
) -> Path:
    """Export ``module`` to ``path``; ``dynamic_axes`` defaults to a free batch dimension on
    every input and output. ``fold_constants=False`` keeps weights under their parameter names
    (folding stores, e.g., a Linear's weight transposed under a generated name)."""
    torch = require_torch()
    inputs = tuple(example_inputs)
    input_names = list(input_names or [f"input_{k}" for k in range(len(inputs))])
    with torch.no_grad():
        outputs = module.eval()(*inputs)
    count = len(outputs) if isinstance(outputs, tuple | list) else 1
    output_names = list(output_names or [f"output_{k}" for k in range(count)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes
            or {name: {0: "batch"} for name in [*input_names, *output_names]},
            do_constant_folding=fold_constants,
        )
    return path


def exported(module, example_inputs: Sequence, **names) -> tempfile.TemporaryDirectory:
    """A temporary folder holding ``model.onnx`` exported from ``module``."""
    folder = tempfile.TemporaryDirectory(prefix="weightdb-torch-")
    export_to_onnx(module, example_inputs, Path(folder.name) / "model.onnx", **names)
    return folder
