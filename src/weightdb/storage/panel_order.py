"""How the engine will read each stored weight, so that storage can lay its blocks out for it.

The engine multiplies by a weight one panel at a time, and a panel spans the whole inner
dimension: a block column of W for ``x @ W`` (MatMul, Gemm without transB), a block row for
``x @ W.T`` (Gemm with transB, Conv kernels viewed as (out, in*kh*kw)). Stored in panel order,
the blocks of a panel lie back to back on one page and the engine multiplies by them in place
(``Page.run``); a block row is stored column-major for that. The graph alone decides this, so
import and repack derive it from the same function. A weight read any other way, or in two
ways, keeps the default row-major order.
"""

from collections import defaultdict
from typing import Literal

import onnx

PanelAxis = Literal["columns", "rows"]


def panel_axes(graph: bytes | None) -> dict[str, PanelAxis]:
    """Tensor name -> the axis of its panels, for weights that one kind of product reads."""
    if not graph:
        return {}
    model = onnx.load_from_string(graph)
    uses: dict[str, set[PanelAxis | None]] = defaultdict(set)
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            if name:
                uses[name].add(_axis(node, position))
    return {name: axes.pop() for name, axes in uses.items() if len(axes) == 1 and None not in axes}


def _axis(node: onnx.NodeProto, position: int) -> PanelAxis | None:
    if position != 1 or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul":
        return "columns"
    if node.op_type == "Gemm":
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        return "rows" if transposed else "columns"
    if node.op_type == "Conv":
        return "rows"
    return None
