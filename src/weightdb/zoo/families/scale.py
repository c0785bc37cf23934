"""scale: N variants of one large embedding-bag MLP, of a chosen total size, for I/O experiments.

Variant 0 is the base; every other variant changes a fraction of each tensor's 256 x 256 blocks
by a small perturbation (a fine-tune-like delta) and keeps the rest bit-identical. Weights are
streamed to disk a band of block rows at a time, for all models at once, so the family can be far
larger than memory. The ONNX files hold the graph and point their initializers into the
safetensors files (ONNX external data), so each weight is on disk once. Accuracy is not measured:
the weights are random, only their size and sharing matter.
"""

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from weightdb.units import format_size, parse_size
from weightdb.zoo.build import BuildContext
from weightdb.zoo.errors import ZooError
from weightdb.zoo.export import OPSET, OUTPUT_NAME
from weightdb.zoo.families import Family
from weightdb.zoo.manifest import Lineage, ModelEntry
from weightdb.zoo.splits import save_split
from weightdb.zoo.streaming import SafetensorsWriter

BLOCK = 256
INPUT = "input_ids"
REQUEST_ROWS, REQUEST_TOKENS = 256, 16


def _layout(per_model: int, dim: int, hidden: int, classes: int) -> list[tuple[str, tuple, float]]:
    """Tensor names, shapes and init scales; the embedding takes what the MLP leaves."""
    mlp = [
        ("fc1.weight", (dim, hidden), dim**-0.5),
        ("fc1.bias", (hidden,), 0.01),
        ("fc2.weight", (hidden, hidden), hidden**-0.5),
        ("fc2.bias", (hidden,), 0.01),
        ("out.weight", (hidden, classes), hidden**-0.5),
        ("out.bias", (classes,), 0.01),
    ]
    rows = (per_model // 4 - sum(int(np.prod(shape)) for _, shape, _ in mlp)) // dim
    if rows < BLOCK:
        raise ZooError(
            f"{format_size(per_model)} per model is too small for this architecture; "
            "raise --total or lower --model-count"
        )
    return [("embedding.weight", (rows, dim), 0.02), *mlp]


def _bands(seed: int, index: int, shape: tuple, scale: float) -> Iterator[tuple[int, np.ndarray]]:
    """The base tensor, one band of BLOCK rows at a time, each band from its own seeded stream."""
    rows = shape[0]
    cols = shape[1] if len(shape) == 2 else 1
    for band, start in enumerate(range(0, rows, BLOCK)):
        rng = np.random.default_rng([seed, index, band])
        height = min(BLOCK, rows - start)
        yield band, rng.standard_normal((height, cols), dtype=np.float32) * np.float32(scale)


def _perturb(values: np.ndarray, mask: np.ndarray, key: list[int], scale: float) -> np.ndarray:
    """A copy of one band with the masked blocks nudged by 1% of the tensor's scale."""
    changed = values.copy()
    for column in np.flatnonzero(mask):
        block = changed[:, column * BLOCK : (column + 1) * BLOCK]
        noise = np.random.default_rng([*key, column]).standard_normal(block.shape, np.float32)
        block += noise * np.float32(scale * 0.01)
    return changed


def _graph(name: str, writer: SafetensorsWriter, layout: list, location: str) -> onnx.ModelProto:
    """Gather -> mean over tokens -> (MatMul, Add, Relu) x2 -> MatMul, Add; external weights."""
    initializers = []
    for tensor, shape, _ in layout:
        proto = TensorProto(name=tensor, data_type=TensorProto.FLOAT, dims=shape)
        proto.data_location = TensorProto.EXTERNAL
        offset, length = writer.byte_range(tensor)
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            proto.external_data.add(key=key, value=str(value))
        initializers.append(proto)
    nodes = [
        helper.make_node("Gather", ["embedding.weight", INPUT], ["tokens"]),
        helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0),
    ]
    previous = "pooled"
    for layer in ("fc1", "fc2", "out"):
        nodes.append(helper.make_node("MatMul", [previous, f"{layer}.weight"], [f"{layer}_mm"]))
        output = OUTPUT_NAME if layer == "out" else f"{layer}_pre"
        nodes.append(helper.make_node("Add", [f"{layer}_mm", f"{layer}.bias"], [output]))
        if layer != "out":
            nodes.append(helper.make_node("Relu", [output], [f"{layer}_act"]))
            previous = f"{layer}_act"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.INT64, ["batch", "tokens"])],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", layout[-1][1][0]]
            )
        ],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def build(context: BuildContext) -> dict[str, Any]:
    """Stream every tensor band by band into all models' files at once."""
    total = parse_size(context.options["total"])
    count = int(context.options["models"])
    fraction = float(context.options["fraction"])
    if count < 2 or not 0 < fraction <= 1:
        raise ZooError("scale needs --model-count >= 2 and 0 < --fraction <= 1")
    dim, hidden, classes = (1024, 4096, 1000) if context.full else (64, 256, 16)
    layout = _layout(total // count, dim, hidden, classes)
    names = ["base"] + [f"variant-{i:03d}" for i in range(1, count)]
    models_dir = context.directory / "models"
    models_dir.mkdir(parents=True)
    changed = np.zeros((count, 2), dtype=np.int64)  # blocks changed, blocks in all
    with ExitStack() as stack:
        writers = [
            stack.enter_context(
                SafetensorsWriter(
                    models_dir / f"{name}.safetensors", [(t, s) for t, s, _ in layout]
                )
            )
            for name in names
        ]
        for index, (tensor, shape, scale) in enumerate(layout):
            cols = shape[1] if len(shape) == 2 else 1
            grid = (-(-shape[0] // BLOCK), -(-cols // BLOCK))
            masks = [
                np.random.default_rng([context.seed, variant, index]).random(grid) < fraction
                for variant in range(count)
            ]
            masks[0][:] = False
            for variant in range(count):
                changed[variant] += (int(masks[variant].sum()), masks[variant].size)
            bands = _bands(context.seed, index, shape, scale)
            for band, values in context.reporter.track(bands, grid[0], f"scale {tensor}"):
                for variant, writer in enumerate(writers):
                    mask = masks[variant][band]
                    key = [context.seed, variant, index, band]
                    writer.write(_perturb(values, mask, key, scale) if mask.any() else values)
        for name, writer in zip(names, writers, strict=True):
            graph = _graph(name, writer, layout, f"{name}.safetensors")
            onnx.save(graph, models_dir / f"{name}.onnx")
    rng = np.random.default_rng(context.seed)
    requests = {INPUT: rng.integers(0, layout[0][1][0], (REQUEST_ROWS, REQUEST_TOKENS))}
    save_split(context.directory / "data/requests.npz", requests, np.zeros(REQUEST_ROWS, np.int64))
    parameters = sum(int(np.prod(shape)) for _, shape, _ in layout)
    models = [
        ModelEntry(
            name=name,
            onnx=f"models/{name}.onnx",
            safetensors=f"models/{name}.safetensors",
            parent=None if variant == 0 else "base",
            frozen=[],
            task="none",
            validation=None,
            test=None,
            metric=None,
            accuracy={"validation": None, "test": None},
            lineage=Lineage("random" if variant == 0 else "parent", 0, context.seed),
            parameters=parameters,
            bytes=(models_dir / f"{name}.safetensors").stat().st_size,
            notes=f"{changed[variant][0]} of {changed[variant][1]} {BLOCK}x{BLOCK} blocks "
            "differ from base",
        )
        for variant, name in enumerate(names)
    ]
    return {
        "description": f"{count} variants of an embedding-bag MLP ({layout[0][1][0]} x {dim} "
        f"embedding, {dim}-{hidden}-{hidden}-{classes} MLP), {format_size(total)} in all.",
        "shared_by_construction": f"per tensor about {fraction:.0%} of the {BLOCK}x{BLOCK} blocks "
        "(2-D views; 1-D tensors as (n, 1)) of each variant differ from the base, the rest are "
        "bit-identical to it. Accuracy is not measured (metric null).",
        "synthetic": "everything: weights are seeded random numbers; requests.npz holds random "
        "token ids (its labels are zeros, not ground truth)",
        "models": models,
        "tasks": [],
        "extra": {"requests": "data/requests.npz", "block_shape": [BLOCK, BLOCK]},
    }


FAMILY = Family(
    name="scale",
    summary="N variants of a large embedding MLP of a chosen total size, block-sparse deltas",
    build=build,
    defaults={
        "small": {"total": "32MiB", "models": 4, "fraction": 0.1},
        "full": {"total": "32GiB", "models": 8, "fraction": 0.1},
    },
)
