"""Hugging Face folders of a BERT-style encoder get their graph at import.

The encoder is built with ``transformers`` from the folder's ``config.json`` and its weights,
exported to ONNX (input_ids, attention_mask -> last_hidden_state) and stored with the folder's
tensors, which the graph reads by their names in the folder. Constant folding is off in that
export: folding would store transposed copies under generated names instead of the folder's
weights; each Linear layer then becomes a Gemm that reads the folder's weight transposed, so
its blocks stream through the buffer pool. When no graph can be built (another architecture, no
``transformers``, other dtypes) the folder is imported weights only and the reason is kept, for
``ls`` and the import result.
"""

import json
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from weightdb.errors import one_line
from weightdb.ingest.graph_attach import attach_graph
from weightdb.ingest.source import ModelSource
from weightdb.ingest.torch_export import export_to_onnx

SUPPORTED_TYPES = ("bert",)
"""``model_type`` values of ``config.json`` built as ``transformers.BertModel``."""

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"
WRAPPER_PREFIX = "encoder."
"""How the export names the encoder's parameters: the attribute ``_last_hidden_state`` uses."""
GRAPH_BUILT_BY = "transformers.BertModel, exported by weightdb"


class NoGraph(Exception):
    """Why a folder gets no graph; the import goes on, weights only."""


def with_encoder_graph(source: ModelSource) -> ModelSource:
    """``source`` (the opened folder) with its encoder's graph, or, when none can be built,
    ``source`` weights only with ``metadata["no_graph_reason"]`` saying why."""
    try:
        config = _supported_config(source)
        graph = _exported_graph(_require_transformers(), config, source)
    except NoGraph as reason:
        source.drop_graph(str(reason))
        return source
    source.metadata["graph_built_by"] = GRAPH_BUILT_BY
    with tempfile.TemporaryDirectory(prefix="weightdb-hf-") as scratch:
        path = Path(scratch) / "model.onnx"
        path.write_bytes(graph)
        return attach_graph(source, path, unused_allowed=True)


def _supported_config(source: ModelSource) -> dict:
    text = source.metadata.get("hf_config")
    if text is None:
        raise NoGraph("the folder has no config.json saying which architecture it holds")
    try:
        config = json.loads(text)
    except ValueError:
        raise NoGraph("its config.json is not valid JSON") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_TYPES:
        raise NoGraph(
            f"weightdb builds graphs for {', '.join(SUPPORTED_TYPES)} encoders, and config.json "
            f"says model_type {model_type!r}; import an ONNX export of it, or add --graph"
        )
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int) or not 0 < layers <= len(source.tensors):
        raise NoGraph(
            f"config.json's num_hidden_layers {layers!r} is not a layer count the folder's "
            f"{len(source.tensors)} tensors can hold"
        )
    return config


def _require_transformers():
    try:
        import torch  # noqa: F401  (transformers models need it)
        import transformers
    except ImportError:
        raise NoGraph(
            "building its graph needs transformers and torch: pip install transformers, then "
            "import it again"
        ) from None
    return transformers


def _folder_names(source: ModelSource, parameters: list[str], prefix: str) -> dict[str, str]:
    """Encoder state-dict name -> the folder's name for it (the folder may carry the base
    model prefix, e.g. ``bert.``, when saved from a model with a head)."""
    held = {entry.name for entry in source.tensors}
    names, missing = {}, []
    for name in parameters:
        found = next((n for n in (name, f"{prefix}.{name}") if n in held), None)
        if found is None:
            missing.append(name)
        names[name] = found
    if missing:
        raise NoGraph(f"the folder lacks tensors the encoder needs: {', '.join(missing[:5])}")
    return names


def _build(transformers, config: dict, source: ModelSource):
    """The encoder with the folder's weights, its sizes checked on the meta device first so a
    config.json that disagrees with the weights allocates nothing."""
    import torch

    try:
        settings = transformers.BertConfig.from_dict(config, attn_implementation="eager")
        with torch.device("meta"):
            shapes = transformers.BertModel(settings, add_pooling_layer=False).state_dict()
    except Exception as error:  # transformers raises many types for a bad config
        raise NoGraph(f"transformers cannot build it from config.json: {one_line(error)}") from None
    names = _folder_names(source, list(shapes), transformers.BertModel.base_model_prefix)
    entries = {entry.name: entry for entry in source.tensors}
    for name, tensor in shapes.items():
        entry = entries[names[name]]
        if entry.shape != tuple(tensor.shape):
            raise NoGraph(
                f"config.json gives {name} the shape {list(tensor.shape)}, the folder "
                f"{list(entry.shape)}; fix config.json, or add --graph"
            )
        if entry.dtype.name != "float32":
            raise NoGraph(
                f"its weight {entry.name} is {entry.dtype.name}; graphs are built for float32 "
                "encoders"
            )
    model = transformers.BertModel(settings, add_pooling_layer=False)
    state = {name: torch.from_numpy(np.array(entries[names[name]].load())) for name in shapes}
    model.load_state_dict(state)
    return model.eval(), names


def _last_hidden_state(model):
    """A module around ``model`` returning only its last hidden state (torch is imported
    lazily, so the class is defined here)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Encoder()


def _exported_graph(transformers, config: dict, source: ModelSource) -> bytes:
    """The encoder's ONNX graph with initializers under the folder's names."""
    import torch

    model, names = _build(transformers, config, source)
    length = min(8, model.config.max_position_embeddings)
    example = torch.ones((2, length), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, OUTPUT)}
    with tempfile.TemporaryDirectory(prefix="weightdb-hf-") as scratch:
        path = Path(scratch) / "model.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_to_onnx(
                    _last_hidden_state(model),
                    (example, example),
                    path,
                    INPUTS,
                    [OUTPUT],
                    dynamic_axes=axes,
                    fold_constants=False,
                )
        except Exception as error:  # torch's exporter raises many types
            raise NoGraph(f"torch could not export it to ONNX: {one_line(error)}") from None
        graph = onnx.load(str(path))
    _use_folder_names(graph, names)
    _linear_layers_as_gemm(graph, set(names.values()))
    return graph.SerializeToString()


def _use_folder_names(graph: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename the exported initializers to the folder's tensor names, in place; any other
    initializer is a constant of the architecture and stays inside the graph."""
    renames = {}
    for tensor in graph.graph.initializer:
        name = names.get(tensor.name.removeprefix(WRAPPER_PREFIX), tensor.name)
        renames[tensor.name] = name
        tensor.name = name
    for node in graph.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def _linear_layers_as_gemm(graph: onnx.ModelProto, stored: set[str]) -> None:
    """Rewrite each ``MatMul(x, Transpose(W))`` over a stored 2-D ``W`` (a Linear layer, as
    exported without folding), in place, as ``Gemm(x as rows, W, transB=1)`` reshaped back to
    ``x``'s leading dims: the engine streams a Gemm's weight through the buffer pool block by
    block, while a transposed weight would be materialized whole when the model compiles."""
    nodes = list(graph.graph.node)
    producers = {name: node for node in nodes for name in node.output}
    readers = Counter(name for node in nodes for name in node.input)
    dims = {tensor.name: list(tensor.dims) for tensor in graph.graph.initializer}
    rewritten, dropped = [], set()
    for node in nodes:
        source = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        weight = source.input[0] if source is not None else None
        perm = [list(a.ints) for a in source.attribute if a.name == "perm"] if source else []
        if (
            source is None
            or source.op_type != "Transpose"
            or weight not in stored
            or len(dims.get(weight, [])) != 2
            or perm not in ([], [[1, 0]])
            or readers[node.input[1]] != 1
        ):
            rewritten.append(node)
            continue
        dropped.add(id(source))
        rewritten.extend(_gemm_nodes(graph, node, weight, dims[weight]))
    del graph.graph.node[:]
    graph.graph.node.extend(node for node in rewritten if id(node) not in dropped)


def _gemm_nodes(graph: onnx.ModelProto, matmul: onnx.NodeProto, weight: str, dims: list[int]):
    """The nodes computing ``matmul`` as a Gemm over rows (see ``_linear_layers_as_gemm``)."""
    outputs, inputs = dims
    x, (y,) = matmul.input[0], matmul.output
    rows, cols = f"weightdb/rows_of_{inputs}", f"weightdb/width_{outputs}"
    known = {tensor.name for tensor in graph.graph.initializer}
    for name, value in ((rows, [-1, inputs]), (cols, [outputs])):
        if name not in known:
            graph.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    make = onnx.helper.make_node
    return [
        make("Shape", [x], [f"{y}/lead"], end=-1),
        make("Reshape", [x, rows], [f"{y}/rows"]),
        make("Gemm", [f"{y}/rows", weight], [f"{y}/gemm"], transB=1),
        make("Concat", [f"{y}/lead", cols], [f"{y}/shape"], axis=0),
        make("Reshape", [f"{y}/gemm", f"{y}/shape"], [y]),
    ]
