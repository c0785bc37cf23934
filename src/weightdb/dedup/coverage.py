"""Which rows of its embedding tables a model's validation split reads: what validation vouches for.

A tensor read only by Gather along axis 0 (an embedding table, an embedding bag) enters a
prediction only through the rows its indices name. Replacing one of its blocks changes the rows
where the two blocks differ; if the validation split never reads such a row, validation cannot
see the change at all, and a test example or a user's request that reads it can lose any amount
of accuracy (a fine-tune's rows for a label that validation happens not to contain). So a
replacement in an embedding table is only verifiable when every row it changes is read by
validation. Dense weights are read whole by every example and are always covered.
"""

from collections.abc import Mapping

import numpy as np
import onnx

UNKNOWN = None
"""Coverage of a table whose indices are computed inside the graph, or of a model whose
evaluator does not expose its inputs: no row is known to be read, so none is vouched for."""


def gathered_rows(
    graph: onnx.ModelProto, inputs: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray | None]:
    """Tensor name -> sorted distinct rows ``inputs`` read, for every graph tensor that only
    Gather nodes read along axis 0 with indices straight from a graph input (else ``UNKNOWN``)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_inputs = {value.name for value in graph.graph.input}
    coverage: dict[str, np.ndarray | None] = {}
    for name, nodes in consumers.items():
        if name in graph_inputs or not all(_gathers_rows_of(node, name) for node in nodes):
            continue
        indices = [node.input[1] for node in nodes]
        if inputs is None or not all(index in inputs for index in indices):
            coverage[name] = UNKNOWN
            continue
        rows = np.concatenate([np.asarray(inputs[index]).reshape(-1) for index in indices])
        coverage[name] = np.unique(rows.astype(np.int64))
    return coverage


def _gathers_rows_of(node: onnx.NodeProto, name: str) -> bool:
    if node.op_type != "Gather" or node.input[0] != name or name in node.input[1:]:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis == 0


def changed_rows(member: np.ndarray, representative: np.ndarray) -> np.ndarray:
    """Rows (within the block) where replacing ``member`` by ``representative`` changes a value."""
    return np.flatnonzero((member != representative).reshape(len(member), -1).any(axis=1))
