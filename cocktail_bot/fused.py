"""Linear merges on the CPU in one pass: every entry is widened, multiplied, added and rounded in registers.

torch runs one kernel per step (widen each input to float64, scale, add, narrow), each a pass through memory;
on a warm page cache that made a merge CPU-bound at about a quarter of memory speed. Here numba compiles one
loop per combination of input and output dtypes (cached on disk beside this module, or in numba's cache
folder), which reads each input entry once and writes each output entry once.

The result is bit for bit the float64 sequence that ``methods.Linear`` runs in torch: ``x_0 * w_0`` first,
then ``fma(x_i, w_i, sum)`` in model order (what torch's ``add_(other, alpha=w)`` computes on the CPU), then
float64 -> float32 -> the output dtype, each rounded to nearest even (how torch casts float64 to bfloat16 and
float16). So every output value is within one ulp of the float64 sum, and reruns give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# float16 entries travel as int16 bits (numba has no float16 arithmetic on the CPU), bfloat16 as uint16.
_AS_NUMPY = {
    torch.bfloat16: torch.uint16,
    torch.float16: torch.int16,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}
DTYPES = frozenset(_AS_NUMPY)


@intrinsic
def _fma(typingctx, x, y, z):
    """x * y + z rounded once (LLVM's fma: one instruction where the CPU has it)."""

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _bits_from_f32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@numba.njit(inline="always")
def _half_to_f32(bits):
    """IEEE half bits to float32, exactly (FP16's ``fp16_ieee_to_fp32_value``, which torch uses)."""
    w = np.uint32(np.uint16(bits)) << np.uint32(16)
    sign = w & np.uint32(0x80000000)
    two_w = np.uint32(w + w)  # numba widens integer sums to 64 bits: wrap as C does
    normal = _f32_from_bits(np.uint32((two_w >> np.uint32(4)) + np.uint32(0xE0 << 23))) * np.float32(
        2.0**-112
    )
    subnormal = _f32_from_bits((two_w >> np.uint32(17)) | np.uint32(126 << 23)) - np.float32(0.5)
    magnitude = _bits_from_f32(normal) if two_w >= np.uint32(1 << 27) else _bits_from_f32(subnormal)
    return _f32_from_bits(sign | magnitude)


@numba.njit(inline="always")
def _f32_to_half(value):
    """float32 to IEEE half bits, rounded to nearest even (FP16's ``fp16_ieee_from_fp32_value``)."""
    base = (abs(value) * np.float32(2.0**112)) * np.float32(2.0**-110)
    w = _bits_from_f32(value)
    shl1_w = np.uint32(w + w)
    sign = w & np.uint32(0x80000000)
    bias = max(shl1_w & np.uint32(0xFF000000), np.uint32(0x71000000))
    base = _f32_from_bits(np.uint32((bias >> np.uint32(1)) + np.uint32(0x07800000))) + base
    bits = _bits_from_f32(base)
    nonsign = np.uint32(((bits >> np.uint32(13)) & np.uint32(0x7C00)) + (bits & np.uint32(0x0FFF)))
    return np.int16(
        np.uint16(
            (sign >> np.uint32(16)) | (np.uint32(0x7E00) if shl1_w > np.uint32(0xFF000000) else nonsign)
        )
    )


def _widen(value):  # the overload below is what compiled code calls
    raise NotImplementedError


@overload(_widen, inline="always")
def _widen_overload(value):
    if value == types.uint16:  # bfloat16: the upper half of a float32
        return lambda value: np.float64(_f32_from_bits(np.uint32(value) << np.uint32(16)))
    if value == types.int16:
        return lambda value: np.float64(_half_to_f32(value))
    return lambda value: np.float64(value)


def _sum(terms, j):
    raise NotImplementedError


@overload(_sum, inline="always")
def _sum_overload(terms, j):
    """Unrolled at compile time over the (array, weight) pairs, so the loop body is straight-line code."""
    if len(terms) == 1:
        return lambda terms, j: _fma(_widen(terms[0][0][j]), terms[0][1], -0.0)
    return lambda terms, j: _fma(_widen(terms[-1][0][j]), terms[-1][1], _sum(terms[:-1], j))


def _store(out, j, total):
    raise NotImplementedError


@overload(_store, inline="always")
def _store_overload(out, j, total):
    if out.dtype == types.uint16:

        def to_bfloat16(out, j, total):
            bits = _bits_from_f32(np.float32(total))
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
            out[j] = np.uint16(0x7FC0) if is_nan else np.uint16(rounded)

        return to_bfloat16
    if out.dtype == types.int16:

        def to_float16(out, j, total):
            out[j] = _f32_to_half(np.float32(total))

        return to_float16

    def to_float(out, j, total):  # float32 (rounded once) or float64
        out[j] = total

    return to_float


@numba.njit(nogil=True, cache=True)
def _linear(out, terms):
    for j in range(out.shape[0]):
        _store(out, j, _sum(terms, j))


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.view(_AS_NUMPY[tensor.dtype]).numpy()


def linear_into(out: torch.Tensor, inputs: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    """``out = sum(w_i * inputs_i)`` in float64, cast to ``out``'s dtype; flat contiguous tensors of ``DTYPES``,
    all of ``out``'s length. Runs without the GIL."""
    if any(x.shape != out.shape or not x.is_contiguous() for x in inputs) or out.dim() != 1:
        raise ValueError("linear_into needs flat contiguous tensors of one length")
    terms = []
    for tensor, weight in zip(inputs, weights, strict=True):
        array = _as_numpy(tensor)
        array.flags.writeable = False  # one compiled signature whether an input is a buffer or a mapped file
        terms.append((array, float(weight)))
    _linear(_as_numpy(out), tuple(terms))
