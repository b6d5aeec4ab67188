"""TFLite integer-only arithmetic (gemmlowp fixed point), vectorised and bit-exact.

MultiplyByQuantizedMultiplier is the double-rounding variant of tensorflow/lite/kernels/internal/common.h:
RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2^left, m), right). Every int32 quantity that
TFLite keeps in an int32 wraps here as it does in the compiled kernels (int64 intermediates, wrapped back).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


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

    @functools.cached_property
    def folded(self) -> FoldedRequant | None:
        """The output stage in fewer int64 passes (see FoldedRequant) where its operands allow; None where not."""
        return fold_requant(self)


class FoldedRequant(NamedTuple):
    """MBQM's two roundings folded into one: for right shifts e >= 1,
    RoundingDivideByPOT((x*m + 2^30) >> 31, e) = ((x*m + 2^30 + 2^(e+30)) >> 31 - [x*m < -2^30]) >> e,
    since floor((floor(a / b) + k) / c) = floor((a + k*b) / (b*c)). |x*m| <= 2^62 and the addend <= 2^61 + 2^30
    keep the sum inside int64. The result is then at most 2^30 + 1 in magnitude, so the zero point add
    cannot wrap and the clamp can come first. The [x*m < -2^30] term (ties away from zero) only moves
    negative results, which a clamp at or above the zero point (a fused ReLU) flattens anyway: there the
    two shifts are one."""

    multiplier: np.ndarray | int
    addend: np.ndarray | int
    exponent: np.ndarray | int  # e
    round_negative: bool
    low: int  # clamp bounds before the zero point is added
    high: int


def fold_requant(rq: Requant) -> FoldedRequant | None:
    m = np.asarray(rq.multiplier, dtype=np.int64)
    s = np.asarray(rq.shift, dtype=np.int64)
    if np.any(m == INT32_MIN) or np.any((s > -1) | (s < -31)):  # saturation, no right shift, or beyond int64
        return None
    e = -s
    low = max(rq.act_min, -128) - rq.zero_point
    high = min(rq.act_max, 127) - rq.zero_point
    addend = (np.int64(1) << 30) + (np.int64(1) << (e + 30))
    if m.ndim == 0 and e.ndim == 0:
        return FoldedRequant(int(m), int(addend), int(e), low < 0, low, high)
    return FoldedRequant(m, addend, e, low < 0, low, high)


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
    v = np.asarray(x).astype(np.int32, copy=False).astype(np.int64)
    return mbqm_inplace(v, multiplier, shift).astype(np.int32)


def mbqm_inplace(v: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """MultiplyByQuantizedMultiplier on an int64 array of int32 values that the caller owns (overwritten).

    Uses closed forms of the gemmlowp steps, equal to them for every int32 input: with the nudge and the
    truncating division, SaturatingRoundingDoublingHighMul(a, b) is (a*b + 2^30) >> 31 (save a = b = INT32_MIN),
    and RoundingDivideByPOT(x, e) is (x + 2^(e-1) - (x < 0)) >> e for e >= 1.
    """
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.clip(np.asarray(shift, dtype=np.int64), -62, 31)
    shape = np.broadcast_shapes(v.shape, m.shape, s.shape)
    if shape != v.shape:
        v = np.broadcast_to(v, shape).copy()
    if s.ndim == 0:
        left, right = max(int(s), 0), max(-int(s), 0)
        any_left, any_right = left > 0, right > 0
    else:
        left, right = np.maximum(s, 0), np.maximum(-s, 0)
        any_left, any_right = bool(left.any()), bool(right.any())
    if any_left:
        v <<= left
        v = v.astype(np.int32).astype(np.int64)  # x * (1 << left) is an int32 product in TFLite: wraps
    saturate = (v == INT32_MIN) & (m == INT32_MIN) if np.any(m == INT32_MIN) else None
    v *= m
    v += 1 << 30
    v >>= 31
    if saturate is not None:
        v[saturate] = INT32_MAX
    if any_right:
        neg = v < 0
        if np.ndim(right) == 0:
            v += 1 << (right - 1)
            v -= neg
        else:
            v += (np.int64(1) << right) >> 1
            v -= neg & (right > 0)
        v >>= right
    return v


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64 (the literal form); int64."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = ab + nudge
    hi = np.where(q >= 0, q >> 31, -((-q) >> 31))  # C++ division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, hi)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT (the literal form): shift right rounding to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def requantize(acc: np.ndarray, rq: Requant, out: np.ndarray | None = None) -> np.ndarray:
    """TFLite's output stage: clamp(MBQM(acc) + zero_point, act_min, act_max) as int8, into out if given."""
    return requantize_owned(np.asarray(acc).astype(np.int32, copy=False), rq, out)


def requantize_owned(v: np.ndarray, rq: Requant, out: np.ndarray | None = None) -> np.ndarray:
    """requantize() of an int64 array of int32 values that the caller owns (overwritten), or of an int32 array
    (only read).

    MBQM's result is an int32 value, so the output stage continues in int32, where adding the zero point
    wraps as in TFLite; the folded form (see FoldedRequant) gives the same bytes in fewer passes."""
    folded = rq.folded
    if folded is not None:
        return _requantize_folded(v, folded, rq.zero_point, out)
    r = mbqm_inplace(v.astype(np.int64, copy=False), rq.multiplier, rq.shift).astype(np.int32)
    if rq.zero_point:
        r += np.int32(rq.zero_point)
    np.clip(r, max(rq.act_min, -128), min(rq.act_max, 127), out=r)
    if out is None:
        return r.astype(np.int8)
    out[...] = r
    return out


def _requantize_folded(v: np.ndarray, f: FoldedRequant, zero_point: int, out: np.ndarray | None) -> np.ndarray:
    """Five or seven passes; a masked subtract (ufunc where=) would cost as much as all the others together."""
    v = np.multiply(v, f.multiplier, out=v if v.dtype == np.int64 else None, dtype=np.int64)
    if f.round_negative:
        negative = v < -(1 << 30)
        v += f.addend
        v >>= 31
        v -= negative
        v >>= f.exponent
    else:
        v += f.addend
        v >>= f.exponent + 31
    np.clip(v, f.low, f.high, out=v)
    if out is None:
        out = np.empty(v.shape, np.int8)
    np.add(v, zero_point, out=out, casting="unsafe")
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
