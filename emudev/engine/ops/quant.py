"""TFLite integer-only arithmetic (gemmlowp fixed point), vectorised and bit-exact.

MultiplyByQuantizedMultiplier is the double-rounding variant of tensorflow/lite/kernels/internal/common.h:
RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^left, m), right). Every int32 quantity that
TFLite keeps in an int32 wraps here as it does in the compiled kernels (int64 intermediates, wrapped back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
_LOW31 = (1 << 31) - 1


@dataclass(frozen=True)
class Requant:
    """drm_emudev_requant: int32 accumulator -> int8, as TFLite's output stage.

    multiplier/shift are scalars (per tensor) or int arrays of C (per channel, along the last dim);
    shift > 0 shifts left (TFLite convention). zero_point is the dst's.
    """

    multiplier: np.ndarray | int
    shift: np.ndarray | int
    act_min: int
    act_max: int
    zero_point: int


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """x as int32, wrapping modulo 2^32 like an int32 register."""
    return np.asarray(x).astype(np.int32, copy=False)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray | int,
                                     shift: np.ndarray | int) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier(int32 x, int32 multiplier, int shift), element-wise; returns int32.

    x is taken as int32 (int64 input wraps); multiplier/shift broadcast against x (per channel: last dim).
    TFLite takes shifts in [-31, 31]; others (an unchecked per-channel table) are clipped to [-62, 31] so they
    give defined results rather than undefined shifts.
    """
    x64 = np.asarray(x).astype(np.int32, copy=False).astype(np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.clip(np.asarray(shift, dtype=np.int64), -62, 31)
    if s.ndim == 0:
        left = max(int(s), 0)
        right: np.ndarray | int = max(-int(s), 0)
        if left:
            x64 = (x64 << left).astype(np.int32).astype(np.int64)
    else:
        left_arr = np.maximum(s, 0)
        right = np.maximum(-s, 0)
        if left_arr.any():
            x64 = (x64 << left_arr).astype(np.int32).astype(np.int64)
    hi = saturating_rounding_doubling_high_mul(x64, m)
    return rounding_divide_by_pot(hi, right).astype(np.int32)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64; returns int64."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    neg = ab < 0
    # nudge = 2^30 for ab >= 0, 1 - 2^30 otherwise; then divide by 2^31 truncating toward zero.
    ab += 1 << 30
    ab -= neg * np.int64((1 << 31) - 1)
    ab += (ab >> 63) & _LOW31
    ab >>= 31
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    if overflow.any():
        ab = np.where(overflow, INT32_MAX, ab)
    return ab


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: arithmetic shift right rounding to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    if np.ndim(exponent) == 0 and int(exponent) == 0:
        return x
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def requantize(acc: np.ndarray, rq: Requant, out: np.ndarray | None = None) -> np.ndarray:
    """TFLite's output stage: clamp(MBQM(acc) + zero_point, act_min, act_max) as int8, into out if given."""
    v = multiply_by_quantized_multiplier(acc, rq.multiplier, rq.shift)
    if rq.zero_point:
        v += np.int32(rq.zero_point)  # int32 add, wraps like TFLite's
    np.clip(v, max(rq.act_min, -128), min(rq.act_max, 127), out=v)
    if out is None:
        return v.astype(np.int8)
    out[...] = v
    return out


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real ~= multiplier * 2^(shift - 31), multiplier in [2^30, 2^31) or 0."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    scaled = q * (1 << 31)  # exact: a power-of-two scaling
    q_fixed = math.floor(abs(scaled) + 0.5)  # TfLiteRound: half away from zero
    if scaled < 0:
        q_fixed = -q_fixed
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift = 0
        q_fixed = 0
    return q_fixed, shift


def check_requant(multiplier: np.ndarray | int, shift: np.ndarray | int, act_min: int, act_max: int,
                  zero_point: int) -> str | None:
    """Value rules of drm_emudev_requant (per tensor or each table entry): None if fine, else the reason."""
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if np.any((m != 0) & ((m < 1 << 30) | (m > INT32_MAX))):
        return "requant multiplier outside [2^30, 2^31) and not 0"
    if np.any((s < -31) | (s > 31)):
        return "requant shift outside [-31, 31]"
    if not -128 <= act_min <= act_max <= 127:
        return "requant act_min/act_max outside [-128, 127] or reversed"
    if not -128 <= zero_point <= 127:
        return "int8 zero point outside [-128, 127]"
    return None
