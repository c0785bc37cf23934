"""The registry of numpy implementations of ONNX ops (default domain).

A kernel is ``fn(*inputs, **attributes)`` returning one array or a tuple of arrays; absent
optional inputs arrive as ``None`` and ONNX attributes as Python values (ints, floats, lists,
str, arrays), with the ONNX defaults as keyword defaults. ``since`` is the lowest opset whose
semantics the kernel implements: an older model is rejected instead of silently miscomputed.
"""

from collections.abc import Callable
from dataclasses import dataclass

Kernel = Callable[..., object]


@dataclass(frozen=True)
class Op:
    kernel: Kernel
    since: int = 1


OPS: dict[str, Op] = {}


def register(name: str, kernel: Kernel, since: int = 1) -> None:
    OPS[name] = Op(kernel, since)


def op(name: str, since: int = 1) -> Callable[[Kernel], Kernel]:
    """Decorator form of ``register``."""

    def decorate(kernel: Kernel) -> Kernel:
        register(name, kernel, since)
        return kernel

    return decorate


# Importing the kernel modules fills OPS.
from weightdb.engine.ops import elementwise, nn, reduce, tensor  # noqa: E402

__all__ = ["OPS", "Op", "elementwise", "nn", "op", "reduce", "register", "tensor"]
