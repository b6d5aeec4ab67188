"""Post-training int8 quantisation, TFLite style.

Activations are per-tensor asymmetric (scale, zero point from calibrated min/max, 0 always
representable), weights per-output-channel symmetric (zero point 0), biases int32 at scale
s_in * s_w, and every real rescale becomes a Q31 multiplier and a shift as TFLite's
QuantizeMultiplier computes them, because that is what the device's requant stage takes.
Ops that only move data (pooling, concat, reshape, max/min) must not change the
quantisation, so their inputs and output share one set of parameters (union-find).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

QMIN, QMAX = -128, 127


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """round(x / scale) + zero point, clamped to int8; computed in place in one float64 temporary."""
        q = np.array(x, np.float64)
        q /= self.scale
        np.round(q, out=q)
        q += self.zero_point
        np.clip(q, QMIN, QMAX, out=q)
        return q.astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """(q - zero point) * scale in float32, into one new array (q may be a view of device memory)."""
        real = np.array(q, np.float32)
        real -= np.float32(self.zero_point)
        real *= np.float32(self.scale)
        return real

    def q(self, value: float) -> int:
        """A real value in the quantised domain, clamped to int8."""
        return int(np.clip(round(value / self.scale) + self.zero_point, QMIN, QMAX))


def qparams_for_range(low: float, high: float) -> QParams:
    """Asymmetric int8 parameters covering [low, high] and 0."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError(f"calibration range [{low}, {high}] is not finite")
    if high - low < 1e-12:
        return QParams(1.0, 0)
    scale = (high - low) / (QMAX - QMIN)
    zero_point = int(np.clip(round(QMIN - low / scale), QMIN, QMAX))
    return QParams(scale, zero_point)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real ~= multiplier * 2^(shift - 31), multiplier in [2^30, 2^31) or 0."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = math.floor(abs(q) * (1 << 31) + 0.5)
    if q < 0:
        q_fixed = -q_fixed
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"rescale factor {real} is too large for a requant multiplier")
    return q_fixed, shift


def weight_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel symmetric scales along `axis` (max |w| / 127; 1 for an all-zero channel)."""
    reduce = tuple(a for a in range(weight.ndim) if a != axis)
    peak = np.max(np.abs(weight.astype(np.float64)), axis=reduce) if reduce else np.abs(weight.astype(np.float64))
    return np.where(peak > 0, peak / QMAX, 1.0)


def quantize_weights(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and their per-channel scales along `axis`."""
    scales = weight_scales(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scales


def bias_int32(bias: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.clip(np.round(bias.astype(np.float64) / scales), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)


def requant_table(real: np.ndarray) -> np.ndarray:
    """(multiplier, shift) int32 pairs, one per channel, as the requant table takes them."""
    pairs = np.array([quantize_multiplier(float(r)) for r in np.ravel(real)], dtype=np.int32)
    return pairs.reshape(-1, 2)


def add_params(s1: float, s2: float, s_out: float, left_shift: int = 20) -> tuple[int, int, int, int, int, int]:
    """TFLite's quantised ADD/SUB: (m1, shift1, m2, shift2, m_out, shift_out) for inputs rescaled after
    a left shift of `left_shift` bits."""
    twice_max = 2 * max(s1, s2)
    m1, sh1 = quantize_multiplier(s1 / twice_max)
    m2, sh2 = quantize_multiplier(s2 / twice_max)
    mo, sho = quantize_multiplier(twice_max / ((1 << left_shift) * s_out))
    return m1, sh1, m2, sh2, mo, sho


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def shared_params(ranges: Mapping[str, tuple[float, float]], groups: Iterable[Sequence[str]]) -> dict[str, QParams]:
    """QParams for every calibrated value; values tied by a group share the union of their ranges."""
    uf = UnionFind()
    for group in groups:
        for other in group[1:]:
            uf.union(group[0], other)
    merged: dict[str, tuple[float, float]] = {}
    for name, (low, high) in ranges.items():
        root = uf.find(name)
        lo0, hi0 = merged.get(root, (0.0, 0.0))
        merged[root] = (min(lo0, low), max(hi0, high))
    return {name: qparams_for_range(*merged[uf.find(name)]) for name in ranges}
