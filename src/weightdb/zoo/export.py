"""Export a trained torch module to ONNX plus safetensors, and measure it with onnxruntime.

The safetensors file holds exactly the ONNX initializers under the same names, so the two files
can be cross-checked. The TorchScript exporter (``dynamo=False``) is used because the dynamo
exporter needs onnxscript, which weightdb does not depend on. Constant folding turns a Linear
weight W into an initializer holding W transposed with a generated name; those are renamed to
``<parameter>.T`` so names are stable and say where the tensor came from.
"""

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from safetensors.numpy import save_file

from weightdb.zoo.splits import load_split

OPSET = 17
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportedModel:
    """Where an exported model lives, paths relative to the family directory."""

    onnx: str
    safetensors: str
    parameters: int
    bytes: int


def export_model(
    module: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    directory: Path,
    stem: str,
    dynamic_axes: Mapping[str, dict[int, str]],
) -> ExportedModel:
    """Write ``models/<stem>.onnx`` and ``models/<stem>.safetensors`` under ``directory``."""
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example_inputs.values()),
            buffer,
            dynamo=False,
            input_names=list(example_inputs),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dict(dynamic_axes),
            opset_version=OPSET,
        )
    model = onnx.load_from_string(buffer.getvalue())
    _name_folded_initializers(model, module)
    onnx.checker.check_model(model)
    tensors = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    models_dir = directory / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, models_dir / f"{stem}.onnx")
    save_file(tensors, models_dir / f"{stem}.safetensors")
    return ExportedModel(
        onnx=f"models/{stem}.onnx",
        safetensors=f"models/{stem}.safetensors",
        parameters=sum(int(t.size) for t in tensors.values()),
        bytes=(models_dir / f"{stem}.safetensors").stat().st_size,
    )


def _name_folded_initializers(model: onnx.ModelProto, module: torch.nn.Module) -> None:
    """Rename generated initializer names to the parameter held (``.T`` if transposed)."""
    state = {name: t.detach().cpu().numpy() for name, t in module.state_dict().items()}
    renames: dict[str, str] = {}
    for init in model.graph.initializer:
        if init.name in state:
            continue
        array = numpy_helper.to_array(init)
        for name, parameter in state.items():
            if parameter.shape == array.shape and np.array_equal(parameter, array):
                renames[init.name] = name
                break
            if parameter.ndim == 2 and np.array_equal(parameter.T, array):
                renames[init.name] = f"{name}.T"
                break
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def predict(onnx_path: Path, inputs: Mapping[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Class predictions (argmax of the first output) of an ONNX model, in batches."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the same numbers on every machine, whatever its cores
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rows = len(next(iter(inputs.values())))
    predictions = []
    for start in range(0, rows, batch_size):
        feed = {name: array[start : start + batch_size] for name, array in inputs.items()}
        predictions.append(session.run(None, feed)[0].argmax(axis=-1))
    return np.concatenate(predictions)


def measure_accuracy(onnx_path: Path, split_path: Path) -> float:
    """Top-1 accuracy of an ONNX model on a saved split, as recorded in family.json."""
    inputs, labels = load_split(split_path)
    return float(np.mean(predict(onnx_path, inputs) == labels))
