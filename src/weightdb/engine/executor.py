"""Compile an ONNX graph once into a plan, then run it on numpy arrays.

``prepare`` checks every op, materializes the stored weights that only non-blocked ops read,
picks the blockwise kernel for ops whose weight operand is stored, folds the subgraphs that
depend on constants alone, orders the rest topologically and assigns every value a register.
``run`` is then a flat loop over the plan that drops each intermediate after its last reader,
so peak memory follows the live activations, not the whole graph. ``run`` does its parallel
work on the engine's own threads, BLAS single-threaded (``threads``), and computes products on
fixed row tiles so that a row's outputs do not depend on its batch (``gemm``).
"""

import heapq
import inspect
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx
from onnx import numpy_helper

from weightdb.engine import blocked, gemm
from weightdb.engine.errors import ExecutionError, InvalidInputError, UnsupportedModelError
from weightdb.engine.input_dtypes import convert_input
from weightdb.engine.ops import OPS, Kernel
from weightdb.engine.threads import engine_threads
from weightdb.engine.weights import StoredWeight, materialize
from weightdb.errors import UnsupportedDTypeError
from weightdb.storage import dtypes

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _attributes(node: onnx.NodeProto) -> dict:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        values[attribute.name] = value
    return values


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)


def _problem(node: onnx.NodeProto, opset: int) -> str | None:
    """Why the engine cannot run ``node``, as the name to list in an error; None if it can."""
    if node.domain not in _DEFAULT_DOMAINS:
        return f"{node.domain}.{node.op_type}"
    op = OPS.get(node.op_type)
    if op is None:
        return node.op_type
    if opset < op.since:
        return f"{node.op_type} (opset {opset}; weightdb implements opset {op.since} and later)"
    try:
        inspect.signature(op.kernel).bind_partial(**_attributes(node))
    except TypeError:
        names = ", ".join(sorted(a.name for a in node.attribute))
        return f"{node.op_type} (attributes {names})"
    return None


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """The ops of ``model`` the engine cannot run, sorted and without repeats (empty if none)."""
    opset = _opset(model)
    problems = (_problem(node, opset) for node in model.graph.node)
    return sorted({p for p in problems if p is not None})


@dataclass(frozen=True)
class InputSpec:
    """A graph input: its dtype and dims (an int, a symbolic name, or None for unknown)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]


def _input_spec(value: onnx.ValueInfoProto) -> InputSpec:
    tensor = value.type.tensor_type
    try:
        dtype = dtypes.from_onnx(tensor.elem_type).numpy
    except UnsupportedDTypeError as error:
        raise UnsupportedModelError(f"graph input {value.name!r}: {error}") from None
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    )
    return InputSpec(value.name, dtype, dims)


@dataclass(frozen=True)
class _Step:
    name: str
    op_type: str
    kernel: Kernel
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    release: tuple[int, ...]  # registers read here for the last time


class PreparedModel:
    """An ONNX graph compiled for repeated ``run`` calls; safe to share between threads."""

    def __init__(
        self,
        model: onnx.ModelProto,
        weights: Mapping[str, StoredWeight],
        on_run: Callable[[], None] | None = None,
        batch_invariant: bool = True,
    ):
        self._on_run = on_run
        """Called as each run starts, e.g. to tell the buffer pool a query begins."""
        self.batch_invariant = batch_invariant
        """Whether products run on fixed row tiles (``gemm``): the default."""
        problems = unsupported_ops(model)
        if problems:
            raise UnsupportedModelError(f"the model uses unsupported ops: {', '.join(problems)}")
        graph = model.graph
        constants: dict[str, np.ndarray | None] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        constants[""] = None  # an absent optional input
        self.inputs = [
            _input_spec(v) for v in graph.input if v.name not in constants and v.name not in weights
        ]
        self.outputs = [v.name for v in graph.output]
        sources = {*constants, *weights, *(spec.name for spec in self.inputs)}
        planned = []
        for node in _topological(graph.node, sources, self.outputs):
            step = _plan_node(node, weights, constants)
            if step is not None:
                planned.append(step)
        self._compile(_embedding_bags(planned, constants, self.outputs), constants)

    def _compile(self, planned: list, constants: dict) -> None:
        """Give every value a register and note after which step each one can be dropped."""
        registers: dict[object, int] = {}

        def register(key: object) -> int:
            return registers.setdefault(key, len(registers))

        for spec in self.inputs:
            register(spec.name)
        last_read: dict[int, int] = {}
        steps = []
        for index, (node, kernel, keys) in enumerate(planned):
            inputs = tuple(register(key) for key in keys)
            for r in inputs:
                last_read[r] = index
            steps.append((node, kernel, inputs, tuple(register(n) for n in node.output)))
        outputs = [register(name) for name in self.outputs]
        self._initial: list = [None] * len(registers)
        for key, r in registers.items():
            if isinstance(key, _Streamed):
                self._initial[r] = key.weight
            elif key in constants:
                self._initial[r] = constants[key]
        kept = set(outputs) | {r for key, r in registers.items() if self._initial[r] is not None}
        releases: dict[int, list[int]] = {}
        for r, index in last_read.items():
            if r not in kept:
                releases.setdefault(index, []).append(r)
        reused = _reusable(steps, releases, kept)
        self._steps = [
            _Step(
                node.name or node.op_type,
                node.op_type,
                reused.get(k, kernel),
                ins,
                outs,
                tuple(releases.get(k, ())),
            )
            for k, (node, kernel, ins, outs) in enumerate(steps)
        ]
        self._input_registers = [registers[spec.name] for spec in self.inputs]
        self._output_registers = outputs
        self._constant_outputs = {registers[n] for n in self.outputs if n in constants}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on ``inputs`` (graph input name -> array); returns output name -> array."""
        if self._on_run is not None:
            self._on_run()
        values = list(self._initial)
        for r, array in zip(self._input_registers, self.validate(inputs), strict=True):
            values[r] = array
        with (
            np.errstate(all="ignore"),
            engine_threads(),
            gemm.batch_invariance(self.batch_invariant),
        ):
            for step in self._steps:
                try:
                    results = step.kernel(*(values[r] for r in step.inputs))
                except (ValueError, IndexError) as error:
                    raise ExecutionError(
                        f"{step.op_type} node {step.name!r} failed: {error}"
                    ) from error
                for r, value in zip(step.outputs, _as_tuple(results), strict=False):
                    values[r] = value
                for r in step.release:
                    values[r] = None
        return {
            # A folded constant is returned as a copy so callers cannot alter the model.
            name: np.array(values[r]) if r in self._constant_outputs else values[r]
            for name, r in zip(self.outputs, self._output_registers, strict=True)
        }

    def validate(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The graph inputs in order, checked and converted to the graph's dtypes."""
        expected = [spec.name for spec in self.inputs]
        missing = [n for n in expected if n not in inputs]
        unknown = [n for n in inputs if n not in expected]
        if missing or unknown:
            raise InvalidInputError(
                f"expected inputs {expected}; missing {missing}, unexpected {unknown}"
            )
        bound: dict[str, tuple[int, str]] = {}
        return [_checked(spec, np.asarray(inputs[spec.name]), bound) for spec in self.inputs]


@dataclass(frozen=True)
class _Streamed:
    """Register key of a stored weight read blockwise (the same name may also be materialized)."""

    weight: StoredWeight = field(hash=False, compare=False)
    name: str = ""


def _plan_node(
    node: onnx.NodeProto, weights: Mapping[str, StoredWeight], constants: dict
) -> tuple[onnx.NodeProto, Kernel, list] | None:
    """(node, bound kernel, input register keys), or None when the node was folded into constants.

    A stored input that the op can stream is passed as the weight itself; any other stored input
    is materialized once, here, and becomes a constant.
    """
    attributes = _attributes(node)
    kernel = OPS[node.op_type].kernel
    keys: list = []
    for position, name in enumerate(node.input):
        weight = weights.get(name)
        streamed = weight and blocked.blocked_kernel(node.op_type, position, weight, attributes)
        if streamed:
            kernel = streamed
            keys.append(_Streamed(weight, name))
            continue
        if weight is not None and name not in constants:
            constants[name] = materialize(weight)
        keys.append(name)
    bound = partial(kernel, **attributes)
    if not all(isinstance(key, str) and key in constants for key in keys):
        return node, bound, keys
    with np.errstate(all="ignore"):
        results = bound(*(constants[key] for key in keys))
    constants.update(zip(node.output, _as_tuple(results), strict=False))
    return None


def _embedding_bags(planned: list, constants: dict, outputs: list[str]) -> list:
    """``planned`` with each streamed Gather read only by a ReduceMean fused into one step.

    The fused step (``blocked.gather_mean``) averages an embedding bag without materializing
    every token's embedding. The ReduceMean's axes must be known at planning time.
    """
    readers = Counter(key for _, _, keys in planned for key in keys if isinstance(key, str))
    gathers = {
        node.output[0]: k
        for k, (node, _, keys) in enumerate(planned)
        if node.op_type == "Gather" and isinstance(keys[0], _Streamed)
    }
    fused: dict[int, tuple] = {}
    dropped: set[int] = set()
    for k, (node, _, keys) in enumerate(planned):
        g = gathers.get(keys[0]) if node.op_type == "ReduceMean" else None
        if g is None or readers[keys[0]] != 1 or keys[0] in outputs:
            continue
        attributes = _attributes(node)
        axes = attributes.get("axes")
        if len(keys) > 1 and keys[1] != "":
            axes = constants.get(keys[1])
        if axes is None or len(axes) == 0:
            continue
        kernel = partial(
            blocked.gather_mean,
            axes=tuple(int(a) for a in np.asarray(axes).reshape(-1)),
            keepdims=attributes.get("keepdims", 1),
        )
        fused[k] = (node, kernel, planned[g][2])
        dropped.add(g)
    return [fused.get(k, step) for k, step in enumerate(planned) if k not in dropped]


# Ops whose first output is always a new array, never a view of an input.
_FRESH = {
    "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Conv", "Gelu", "Erf", "Softmax",
    "LayerNormalization", "BatchNormalization", "Relu", "Sigmoid", "Tanh", "Where",
}  # fmt: skip


def _reusable(steps: list, releases: dict[int, list[int]], kept: set[int]) -> dict[int, Kernel]:
    """Kernels that write an Add/Sub/Mul/Relu result into a dying operand instead of a new array.

    Saves an allocation and a pass over memory per bias add, residual, scale and activation.
    An operand qualifies when it dies at this step, came from an op that returns new arrays,
    and every op that read it returns new arrays too (so no view of it outlives this step).
    """
    fresh, readers = set(), {}
    for node, _, ins, outs in steps:
        if node.op_type in _FRESH:
            fresh.add(outs[0])
        for r in ins:
            readers.setdefault(r, set()).add(node.op_type)
    kernels = {}
    for k, (node, _, ins, _) in enumerate(steps):
        in_place = _IN_PLACE.get(node.op_type)
        if in_place is None:
            continue
        dying = set(releases.get(k, ()))
        for position, r in enumerate(ins):
            if r in dying and r in fresh and r not in kept and readers[r] <= _FRESH:
                kernels[k] = in_place(position)
                break
    return kernels


def _into(ufunc: np.ufunc, position: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ufunc(a, b) written into operand ``position`` when shape and dtype allow."""
    target = (a, b)[position]
    if a.dtype == b.dtype and (
        a.shape == b.shape or target.shape == np.broadcast_shapes(a.shape, b.shape)
    ):
        return ufunc(a, b, out=target)
    return ufunc(a, b)


def _relu_into(x: np.ndarray) -> np.ndarray:
    """Relu written into its dying input (the kernel's ``np.maximum(x, 0)``, in place)."""
    return np.maximum(x, np.zeros((), x.dtype), out=x)


# op type -> the kernel that writes its result into the operand at a position
_IN_PLACE: dict[str, Callable[[int], Kernel]] = {
    "Add": lambda position: partial(_into, np.add, position),
    "Sub": lambda position: partial(_into, np.subtract, position),
    "Mul": lambda position: partial(_into, np.multiply, position),
    "Relu": lambda position: _relu_into,
}


def _checked(spec: InputSpec, array: np.ndarray, bound: dict[str, tuple[int, str]]) -> np.ndarray:
    """``array`` converted to ``spec``'s dtype after checking its kind and shape.

    The dtype converts only when the cast loses nothing in kind (see ``input_dtypes``).
    Symbolic dims must agree across inputs (``batch`` is one number for all inputs of one call).
    """
    array = convert_input(spec.name, array, spec.dtype)
    if spec.dims and array.ndim != len(spec.dims):
        raise InvalidInputError(
            f"input {spec.name!r} must have {len(spec.dims)} dimensions {_show(spec.dims)}, "
            f"got shape {array.shape}"
        )
    for axis, (want, got) in enumerate(zip(spec.dims, array.shape, strict=False)):
        if isinstance(want, int) and want != got:
            raise InvalidInputError(
                f"input {spec.name!r} must have shape {_show(spec.dims)}, got {array.shape} "
                f"(dimension {axis} is {got}, expected {want})"
            )
        if isinstance(want, str):
            size, owner = bound.setdefault(want, (got, spec.name))
            if size != got:
                raise InvalidInputError(
                    f"input {spec.name!r} has {want!r} = {got} (dimension {axis}) but input "
                    f"{owner!r} has {want!r} = {size}; they must agree"
                )
    return array


def _show(dims: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _as_tuple(results) -> tuple:
    return results if isinstance(results, tuple) else (results,)


def _topological(nodes, sources: set[str], outputs: list[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is read (Kahn's algorithm,
    keeping the file's order among ready nodes)."""
    producer = {name: k for k, node in enumerate(nodes) for name in node.output}
    known = sources | producer.keys() | {""}
    for name in outputs:
        if name not in known:
            raise UnsupportedModelError(f"graph output {name!r} is produced by no node")
    waiting: list[int] = []
    consumers: dict[int, list[int]] = {}
    for k, node in enumerate(nodes):
        absent = [name for name in node.input if name not in known]
        if absent:
            raise UnsupportedModelError(
                f"node {node.name or node.op_type!r} reads {absent}, which no node, input or "
                "initializer produces"
            )
        upstream = {producer[n] for n in node.input if n in producer and n not in sources}
        waiting.append(len(upstream))
        for u in upstream:
            consumers.setdefault(u, []).append(k)
    ready = [k for k, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for c in consumers.get(k, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(ordered) < len(nodes):
        raise UnsupportedModelError("the graph has a cycle")
    return ordered


def prepare(
    model: onnx.ModelProto,
    weights: Mapping[str, StoredWeight],
    on_run: Callable[[], None] | None = None,
    batch_invariant: bool = True,
) -> PreparedModel:
    """Compile ``model`` whose large initializers were moved into ``weights`` (name -> weight);
    ``on_run`` is called as each run starts."""
    return PreparedModel(model, weights, on_run, batch_invariant)
