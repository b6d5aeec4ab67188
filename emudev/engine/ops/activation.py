"""Activations applied on the way out of CONV, GEMM and SDP (floating point; int8 clamps via act_min/act_max)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import apply_constant

ACT_NONE, ACT_RELU, ACT_RELU6, ACT_CLIP, ACT_LEAKY_RELU, ACT_SIGMOID, ACT_TANH = range(7)
ACT_FNS = frozenset(range(7))
FLOAT_ONLY = frozenset({ACT_SIGMOID, ACT_TANH})


@dataclass(frozen=True)
class Activation:
    """drm_emudev_activation: fn from the spec enum, alpha for LEAKY_RELU, bounds for CLIP."""

    fn: int
    alpha: float = 0.0
    clip_min: float = 0.0
    clip_max: float = 0.0


NO_ACTIVATION = Activation(ACT_NONE)


def check_activation(act_fn: int, dst_is_float: bool) -> str | None:
    """None if act_fn is known and fits the dst; integer dsts take no activation (their clamp is act_min/max)."""
    if act_fn not in ACT_FNS:
        return f"unknown activation {act_fn}"
    if not dst_is_float and act_fn != ACT_NONE:
        return "activation on an integer dst (use requant act_min/act_max)"
    return None


def apply(x: np.ndarray, act: Activation) -> np.ndarray:
    """Apply act to x, in place when x is a writable fp32/fp64 array; returns the result.

    fp16 input is computed in fp32 and written back once, so it is rounded a single time.
    """
    fn = act.fn
    if fn == ACT_NONE:
        return x
    if fn not in ACT_FNS:
        raise ValueError(f"unknown activation {fn}")
    if x.dtype.kind != "f":
        raise ValueError(f"activation {fn} on a {x.dtype} array")
    writable = isinstance(x, np.ndarray) and x.flags.writeable
    if x.dtype in (np.float32, np.float64) and writable:
        work = x
    else:
        work = np.array(x, dtype=np.float32 if x.dtype != np.float64 else np.float64)
    _apply_inplace(work, act)
    if work is not x and writable:
        x[...] = work
        return x
    return work


def _apply_inplace(x: np.ndarray, act: Activation) -> None:
    fn = act.fn
    if fn == ACT_RELU:
        apply_constant(np.maximum, x, 0)
    elif fn == ACT_RELU6:
        apply_constant(np.maximum, x, 0)
        apply_constant(np.minimum, x, 6)
    elif fn == ACT_CLIP:
        # min(max(x, lo), hi) exactly as the spec says, even for lo > hi.
        apply_constant(np.maximum, x, act.clip_min)
        apply_constant(np.minimum, x, act.clip_max)
    elif fn == ACT_LEAKY_RELU:
        # exactly alpha * x where x < 0 (np.where beats a masked multiply several times over)
        x[...] = np.where(x < 0, x * x.dtype.type(act.alpha), x)
    elif fn == ACT_SIGMOID:
        # 1 / (1 + exp(-x)) without temporaries; exp overflow gives inf and then exactly 0.
        with np.errstate(over="ignore"):
            np.negative(x, out=x)
            np.exp(x, out=x)
        x += 1
        np.reciprocal(x, out=x)
    elif fn == ACT_TANH:
        np.tanh(x, out=x)
