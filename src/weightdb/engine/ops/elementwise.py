"""Elementwise ops: arithmetic, comparisons, logic, activations, Where, Cast, Clip.

numpy broadcasting is ONNX multidirectional broadcasting, so most ops are a ufunc. Results keep
the dtype of the ONNX operands (numpy would promote e.g. float32 ** int64 to float64).
"""

import math
from functools import partial

import numpy as np

from weightdb.engine.ops import op, register
from weightdb.storage import dtypes

_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
}
_UNARY = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Reciprocal": np.reciprocal,
    "Tanh": np.tanh,
    "Sin": np.sin,
    "Cos": np.cos,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.rint,  # ONNX rounds half to even, as rint does
    "Sign": np.sign,
    "Not": np.logical_not,
    "IsNaN": np.isnan,
    "Identity": np.asarray,
}
_VARIADIC = {"Sum": np.add, "Max": np.maximum, "Min": np.minimum}

for _name, _ufunc in _BINARY.items():
    register(_name, _ufunc)
for _name, _ufunc in _UNARY.items():
    register(_name, _ufunc)


def _fold(ufunc: np.ufunc, *arrays: np.ndarray) -> np.ndarray:
    result = arrays[0]
    for array in arrays[1:]:
        result = ufunc(result, array)
    return result


for _name, _ufunc in _VARIADIC.items():
    register(_name, partial(_fold, _ufunc), since=8)


@op("Mean", since=8)
def mean(*arrays: np.ndarray) -> np.ndarray:
    return (_fold(np.add, *arrays) / len(arrays)).astype(arrays[0].dtype, copy=False)


@op("Div")
def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":  # integer division truncates toward zero, like C
        quotient = np.floor_divide(a, b)
        return quotient + ((quotient < 0) & (quotient * b != a))
    return np.divide(a, b)


@op("Mod", since=10)
def mod(a: np.ndarray, b: np.ndarray, *, fmod: int = 0) -> np.ndarray:
    return np.fmod(a, b) if fmod else np.mod(a, b)


@op("Pow", since=7)
def power(base: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    if exponent.ndim == 0 and exponent == 2:
        return np.square(base)
    return np.power(base, exponent.astype(base.dtype, copy=False))


@op("IsInf", since=10)
def isinf(x: np.ndarray, *, detect_negative: int = 1, detect_positive: int = 1) -> np.ndarray:
    return np.isinf(x) & (((x < 0) & bool(detect_negative)) | ((x > 0) & bool(detect_positive)))


@op("Where", since=9)
def where(condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(condition, x, y)


@op("Cast", since=6)
def cast(x: np.ndarray, *, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    return x.astype(dtypes.from_onnx(to).numpy, copy=False)


@op("CastLike", since=15)
def cast_like(x: np.ndarray, target: np.ndarray, *, saturate: int = 1) -> np.ndarray:
    return x.astype(target.dtype, copy=False)


@op("Clip", since=11)
def clip(x: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None):
    return np.clip(x, low, high).astype(x.dtype, copy=False)


@op("Relu", since=6)
def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


@op("LeakyRelu", since=6)
def leaky_relu(x: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    return np.where(x >= 0, x, x * x.dtype.type(alpha))


@op("Sigmoid", since=6)
def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x|, and tanh is vectorized well by numpy.
    half = x.dtype.type(0.5)
    return np.tanh(x * half) * half + half


@op("Softplus")
def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x, np.zeros((), x.dtype))


# erf as x * P(x^2) / Q(x^2) on [-4, 4] (Eigen's float32 rational approximation, error < 5e-7
# relative over the whole range; erf(4) rounds to 1 in float32). numpy has no erf, and scipy is
# not a core dependency. Only +, *, / and clip: correctly rounded, so the bits do not depend on
# the CPU's vector width. Coefficients go from the highest power down.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _argument_scaled(coefficients: tuple[float, ...], scale: float) -> tuple[float, ...]:
    """The coefficients of u -> P(scale * u), given P's."""
    degree = len(coefficients) - 1
    return tuple(c * scale ** (degree - k) for k, c in enumerate(coefficients))


# Gelu(x) = x * (1/2 + erf(x / sqrt 2) / 2), and erf(x / sqrt 2) / 2 = x * P(u/2) / (2 sqrt 2
# Q(u/2)) with u = x^2: folding the halving, 1/sqrt 2 and 1/2 into the coefficients saves four
# passes over the data.
_GELU_P = tuple(c / (2 * math.sqrt(2)) for c in _argument_scaled(_ERF_P, 0.5))
_GELU_Q = _argument_scaled(_ERF_Q, 0.5)
# Elements per chunk: the temporaries of one chunk stay in L2 cache instead of streaming
# two dozen full-size passes through memory.
_CHUNK = 1 << 16


def _horner(coefficients: tuple[float, ...], u: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.multiply(u, coefficients[0], out=out)
    out += coefficients[1]
    for c in coefficients[2:]:
        out *= u
        out += c
    return out


def _odd_rational(
    x: np.ndarray, out: np.ndarray, scratch: tuple[np.ndarray, np.ndarray], rational: tuple
) -> None:
    """out = c * P(c^2) / Q(c^2) with c = x clipped to [-limit, limit], for ``rational`` =
    (P's coefficients, Q's coefficients, limit)."""
    numerator, denominator, limit = rational
    u, q = scratch
    np.clip(x, -limit, limit, out=out)
    np.multiply(out, out, out=u)
    out *= _horner(numerator, u, q)
    out /= _horner(denominator, u, q)


def _erf_chunk(x: np.ndarray, out: np.ndarray, u: np.ndarray, q: np.ndarray) -> None:
    _odd_rational(x, out, (u, q), (_ERF_P, _ERF_Q, 4.0))


def _gelu_chunk(x: np.ndarray, out: np.ndarray, u: np.ndarray, q: np.ndarray) -> None:
    _odd_rational(x, out, (u, q), (_GELU_P, _GELU_Q, 4 * math.sqrt(2)))  # erf(x/sqrt 2)/2
    out += 0.5
    out *= x


def _chunked(x: np.ndarray, body) -> np.ndarray:
    """Apply ``body(x_chunk, out_chunk, u, q)`` over flat chunks of x into a new array."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    u = np.empty(min(_CHUNK, flat.size), x.dtype)
    q = np.empty_like(u)
    for start in range(0, flat.size, _CHUNK):
        stop = min(start + _CHUNK, flat.size)
        n = stop - start
        body(flat[start:stop], out[start:stop], u[:n], q[:n])
    return out.reshape(x.shape)


def _gelu_tanh_chunk(x: np.ndarray, out: np.ndarray, u: np.ndarray, q: np.ndarray) -> None:
    np.multiply(x, x, out=u)
    u *= 0.044715
    u += 1
    u *= x
    u *= math.sqrt(2 / math.pi)
    np.tanh(u, out=out)
    out += 1
    out *= x
    out *= 0.5


@op("Erf", since=9)
def erf(x: np.ndarray) -> np.ndarray:
    return _chunked(x, _erf_chunk)


@op("Gelu", since=20)
def gelu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    return _chunked(x, _gelu_tanh_chunk if approximate == "tanh" else _gelu_chunk)
