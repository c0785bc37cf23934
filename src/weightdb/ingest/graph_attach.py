"""Weights from one file, the graph from an ONNX file, matched by tensor name.

The ONNX file's initializers are the contract. Each weight it stores as a tensor must be in the
weights with the same shape and dtype; its small constants (a Reshape's target shape, a scalar:
what ONNX import keeps inside the graph) come from the weights when they hold them and from the
graph otherwise. A weight the graph does not use is refused: it would be stored, yet prediction
would never read it, which is almost always the wrong file.
"""

from pathlib import Path

import onnx

from weightdb.errors import SourceFormatError
from weightdb.ingest.onnx_format import open_onnx
from weightdb.ingest.source import ModelSource, TensorEntry
from weightdb.storage import dtypes

SHOWN = 5
"""How many offending names an error lists."""


def _names(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(repr(n) for n in names[:SHOWN]) + more


def _check_entry(weight: TensorEntry, graph_dtype: str, graph_shape: tuple, where: str) -> None:
    if weight.shape != graph_shape or weight.dtype.name != graph_dtype:
        raise SourceFormatError(
            f"{where}: tensor {weight.name!r} is {weight.dtype.name}{list(weight.shape)} but the "
            f"graph needs {graph_dtype}{list(graph_shape)}; export the weights from the same "
            "model as the graph"
        )


def attach_graph(
    weights: ModelSource, graph_path: Path, *, unused_allowed: bool = False
) -> ModelSource:
    """``weights`` with the graph of ``graph_path``; refuses, in one line naming them, weights
    the graph needs but ``weights`` lack, weights of another shape or dtype, and (unless
    ``unused_allowed``) weights the graph does not use. Closes ``weights`` on error."""
    where = f"{weights.format} weights with graph {graph_path.name}"
    try:
        with open_onnx(graph_path) as graph_source:
            source = _attached(weights, graph_source, where, unused_allowed)
    except BaseException:
        weights.resources.close()
        raise
    return source


def _attached(
    weights: ModelSource, graph_source: ModelSource, where: str, unused_allowed: bool
) -> ModelSource:
    held = {entry.name: entry for entry in weights.tensors}
    missing = [e.name for e in graph_source.tensors if e.name not in held]
    if missing:
        folded = any(name.startswith("onnx::") for name in missing)
        hint = " (torch.onnx.export with do_constant_folding=False keeps parameter names)"
        raise SourceFormatError(
            f"{where}: the graph needs tensors the weights lack: {_names(missing)}; export the "
            "weights from the same model as the graph, or import the ONNX file itself"
            + (hint if folded else "")
        )
    for entry in graph_source.tensors:
        _check_entry(held[entry.name], entry.dtype.name, entry.shape, where)
    model = onnx.ModelProto()
    model.ParseFromString(graph_source.graph)
    constants = []
    for tensor in model.graph.initializer:
        if tensor.name in held:
            dtype = dtypes.from_onnx(tensor.data_type).name
            _check_entry(held[tensor.name], dtype, tuple(tensor.dims), where)
        else:
            constants.append(tensor)
    order = graph_source.metadata["initializer_order"]
    used = set(order)
    unused = [name for name in held if name not in used]
    if unused and not unused_allowed:
        raise SourceFormatError(
            f"{where}: the graph does not use tensors {_names(unused)}; remove them from the "
            "weights, or use the graph of the model they come from"
        )
    del model.graph.initializer[:]
    model.graph.initializer.extend(constants)
    return ModelSource(
        format=weights.format,
        tensors=weights.tensors,
        graph=model.SerializeToString(),
        metadata={
            **weights.metadata,
            "initializer_order": order,
            "graph_constants": len(constants),
        },
        resources=weights.resources,
    )
