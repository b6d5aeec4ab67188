"""SDP engine: per-channel scale/bias, an element-wise op with a broadcast second operand, activation.

With op NONE between int8 and a float type it is the NPU's data-type converter (NVDLA's SDP output
converter), so that a network mixing int8 and float layers stays on the device: int8 -> float
dequantises (src - zero point, then the float pipeline), float -> int8 quantises (the float pipeline,
then round half to even, plus dst's zero point, clamped to requant's [act_min, act_max]).

int8 follows TFLite's reference_integer_ops: ADD/SUB (offset inputs shifted left, each rescaled by its own
multiplier, combined, rescaled to the output), MUL (product of offset inputs rescaled), MAX/MIN on raw
values (operands share the output's quantisation) and NONE (requantise src). Work is done in blocks of
about CHUNK_BYTES so the int64 temporaries of the int8 path stay bounded.

With a per-tensor requant, an int8 ADD/SUB/MUL/NONE is a function of its operands' bytes alone, so the
engine evaluates that function once for all 65,536 (or 256) byte values and then gathers from the
table: bit-identical by construction, and one uint16 pass plus a gather instead of a dozen int64 passes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from . import activation as _act
from ._common import (
    CHUNK_BYTES,
    FLOAT_DTYPES,
    INT8,
    apply_channels,
    apply_constant,
    block_slices,
    check_tensor,
    dtype_name,
    first_error,
    same_view,
)
from .activation import NO_ACTIVATION, Activation
from .quant import INT32_MAX, Requant, mbqm_inplace, requantize_owned

SDP_NONE, SDP_ADD, SDP_SUB, SDP_MUL, SDP_MAX, SDP_MIN = range(6)
SDP_OPS = frozenset(range(6))
_FLOAT_UFUNCS = {SDP_ADD: np.add, SDP_SUB: np.subtract, SDP_MUL: np.multiply, SDP_MAX: np.maximum,
                 SDP_MIN: np.minimum}


def check_sdp(op: int, src_dims: Sequence[int], src2_dims: Sequence[int] | None, dst_dims: Sequence[int],
              src_dtype: int, src2_dtype: int | None, dst_dtype: int, act_fn: int, has_requant: bool,
              has_scale: bool = False, has_bias: bool = False, left_shift: int = 0) -> str | None:
    """Submit-time rules of SDP; src2_dims/src2_dtype are None for op NONE. None if fine, else the reason."""
    if op not in SDP_OPS:
        return f"unknown SDP op {op}"
    err = first_error(check_tensor("src", src_dims, src_dtype), check_tensor("dst", dst_dims, dst_dtype))
    if err:
        return err
    if tuple(src_dims) != tuple(dst_dims):
        return f"src dims {tuple(src_dims)} != dst dims {tuple(dst_dims)}"
    if op == SDP_NONE:
        if src2_dims is not None:
            return "op NONE takes no src2"
    else:
        if src2_dims is None or src2_dtype is None:
            return "op needs a src2"
        err = check_tensor("src2", src2_dims, src2_dtype)
        if err:
            return err
        for d2, d in zip(src2_dims, dst_dims, strict=True):
            if d2 not in (1, d):
                return f"src2 dims {tuple(src2_dims)} do not broadcast to {tuple(dst_dims)}"
    if op == SDP_NONE and (src_dtype == INT8) != (dst_dtype == INT8):
        return _check_conversion(src_dtype, dst_dtype, act_fn)
    if src_dtype in FLOAT_DTYPES:
        if dst_dtype not in FLOAT_DTYPES or (op != SDP_NONE and src2_dtype not in FLOAT_DTYPES):
            return "floating src needs floating src2 and dst"
        if has_requant:
            return "requant given for a floating dst"
        return _act.check_activation(act_fn, True)
    if src_dtype != INT8:
        return f"src dtype {dtype_name(src_dtype)} not supported"
    if dst_dtype != INT8 or (op != SDP_NONE and src2_dtype != INT8):
        return "int8 src needs int8 src2 and dst"
    if not has_requant:
        return "int8 dst needs a requant"
    if has_scale or has_bias:
        return "scale/bias are floating point only"
    if not 0 <= left_shift <= 31:
        return f"left_shift {left_shift} outside [0, 31]"
    return _act.check_activation(act_fn, False)


def _check_conversion(src_dtype: int, dst_dtype: int, act_fn: int) -> str | None:
    floating = dst_dtype if src_dtype == INT8 else src_dtype
    if floating not in FLOAT_DTYPES:
        return f"int8 converts to and from fp32 or fp16, not {dtype_name(floating)}"
    if dst_dtype == INT8:
        return None if act_fn == _act.ACT_NONE else "quantising clamps with requant: act must be NONE"
    return _act.check_activation(act_fn, True)


def sdp(src: np.ndarray, src2: np.ndarray | None, dst: np.ndarray, *, op: int = SDP_NONE,
        scale: np.ndarray | None = None, bias: np.ndarray | None = None, act: Activation = NO_ACTIVATION,
        src_zero_point: int = 0, src2_zero_point: int = 0, src_multiplier: int = 0, src_shift: int = 0,
        src2_multiplier: int = 0, src2_shift: int = 0, left_shift: int = 0,
        requant: Requant | None = None) -> None:
    """SDP: dst = act(op(src * scale[c] + bias[c], src2)) (float) or TFLite's quantised op (int8), in place;
    with op NONE between int8 and float, the conversion (int8 src: its zero point; int8 dst: requant's).

    src2 may have dims of 1 or 0 strides (broadcast). src or src2 may be the very same view as dst.
    """
    if op not in SDP_OPS:
        raise ValueError(f"unknown SDP op {op}")
    if src.shape != dst.shape:
        raise ValueError(f"src shape {src.shape} != dst shape {dst.shape}")
    if op == SDP_NONE:
        src2 = None
    elif src2 is None:
        raise ValueError("op needs src2")
    src = _unalias(src, dst)
    if src2 is not None:
        src2 = np.broadcast_to(_unalias(src2, dst), dst.shape)
    if scale is not None:
        scale = _unalias(np.asarray(scale, np.float32), dst)
    if bias is not None:
        bias = _unalias(np.asarray(bias, np.float32), dst)
    quantized = src.dtype == np.int8
    if op == SDP_NONE and quantized != (dst.dtype == np.int8):
        if dst.dtype == np.int8 and requant is None:
            raise ValueError("quantising needs requant's clamp and zero point")
        for idx in block_slices(dst.shape, CHUNK_BYTES // 16):
            _convert(src[idx], dst[idx], scale, bias, act, src_zero_point, requant)
        return
    if quantized:
        if requant is None:
            raise ValueError("int8 SDP needs a requant")
        if scale is not None or bias is not None:
            raise ValueError("scale/bias are floating point only")
        table = _table_for(op, dst.size, requant, src_zero_point, src2_zero_point, src_multiplier, src_shift,
                           src2_multiplier, src2_shift, left_shift)
        if table is not None:
            for idx in block_slices(dst.shape, _GATHER_BLOCK):
                _gather(table, src[idx], src2[idx] if src2 is not None else None, dst[idx])
            return
        # Per-channel requant vectors broadcast along the last dim, which blocks never split.
        for idx in block_slices(dst.shape, CHUNK_BYTES // 64):
            s2 = src2[idx] if src2 is not None else None
            _sdp_int8(src[idx], s2, dst[idx], op, requant, src_zero_point, src2_zero_point, src_multiplier,
                      src_shift, src2_multiplier, src2_shift, left_shift)
        return
    for idx in block_slices(dst.shape, CHUNK_BYTES // 16):
        s2 = src2[idx] if src2 is not None else None
        _sdp_float(src[idx], s2, dst[idx], op, scale, bias, act)


def _unalias(a: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """a, or a copy if it overlaps dst other than as the very same view (block-wise writes would clobber it)."""
    if np.may_share_memory(a, dst) and not same_view(a, dst):
        return a.copy()
    return a


def _sdp_float(src: np.ndarray, src2: np.ndarray | None, dst: np.ndarray, op: int, scale: np.ndarray | None,
               bias: np.ndarray | None, act: Activation) -> None:
    f32 = np.float32
    # Work in dst when it is fp32, unless src2 is dst itself and scale/bias would overwrite it before use.
    clobbers_src2 = src2 is not None and (scale is not None or bias is not None) and np.may_share_memory(src2, dst)
    t = dst if dst.dtype == f32 and not clobbers_src2 else np.empty(dst.shape, f32)
    cur = src
    if scale is not None:
        np.multiply(cur, scale, out=t, dtype=f32)
        cur = t
    if bias is not None:
        if cur is t:
            apply_channels(np.add, t, bias)
        else:
            np.add(cur, bias, out=t, dtype=f32)
            cur = t
    if src2 is not None:
        _FLOAT_UFUNCS[op](cur, src2, out=t, dtype=f32)
    elif cur is not t:
        np.copyto(t, cur, casting="unsafe")
    _act.apply(t, act)
    if t is not dst:
        dst[...] = t


def _convert(src: np.ndarray, dst: np.ndarray, scale: np.ndarray | None, bias: np.ndarray | None,
             act: Activation, src_zero_point: int, requant: Requant | None) -> None:
    """int8 <-> float. The clamp comes before the rounding (its bounds are integers, so the result is the
    same) and with fmax/fmin, which take a NaN to act_min instead of an undefined integer."""
    f32 = np.float32
    t = np.empty(dst.shape, f32)
    if src.dtype == np.int8:
        np.subtract(src, src_zero_point, out=t, dtype=f32)
    else:
        np.copyto(t, src, casting="unsafe")
    if scale is not None:
        apply_channels(np.multiply, t, scale)
    if bias is not None:
        apply_channels(np.add, t, bias)
    if requant is None:
        _act.apply(t, act)
    else:
        apply_constant(np.fmax, t, requant.act_min - requant.zero_point)
        apply_constant(np.fmin, t, requant.act_max - requant.zero_point)
        np.rint(t, out=t)
        t += requant.zero_point
    dst[...] = t


# Tensors at least this large go through a table: building one costs about as much as computing
# 40K elements directly, and it is kept for the next run of the same layer.
TABLE_MIN_ELEMENTS = 1 << 12
# Elements per gather: its uint16 and intp indices stay in L2.
_GATHER_BLOCK = 1 << 16
_TABLE_OPS = frozenset({SDP_NONE, SDP_ADD, SDP_SUB, SDP_MUL})
# Every int8 value, in the order of its bit pattern (the index a byte gives).
_BYTES = np.arange(256, dtype=np.uint8).view(np.int8)


def _table_for(op: int, size: int, rq: Requant, zp1: int, zp2: int, m1: int, s1: int, m2: int, s2: int,
               left_shift: int) -> np.ndarray | None:
    """The op's result table, or None where a table does not apply (per-channel requant) or does not pay."""
    if op not in _TABLE_OPS or size < TABLE_MIN_ELEMENTS or np.ndim(rq.multiplier) or np.ndim(rq.shift):
        return None
    if op == SDP_NONE:
        zp2 = m1 = s1 = m2 = s2 = left_shift = 0  # not read: one table per requant and input zero point
    elif op == SDP_MUL:
        m1 = s1 = m2 = s2 = left_shift = 0
    return _table(op, int(rq.multiplier), int(rq.shift), rq.act_min, rq.act_max, rq.zero_point, zp1, zp2,
                  m1, s1, m2, s2, left_shift)


@functools.lru_cache(maxsize=64)
def _table(op: int, multiplier: int, shift: int, act_min: int, act_max: int, zero_point: int, zp1: int, zp2: int,
           m1: int, s1: int, m2: int, s2: int, left_shift: int) -> np.ndarray:
    """The op over every operand byte (pair), computed by the element-wise path itself; index
    src_byte << 8 | src2_byte for a binary op, src_byte for NONE. 64 tables of 64 KiB at most."""
    rq = Requant(multiplier, shift, act_min, act_max, zero_point)
    src, src2 = (_BYTES, None) if op == SDP_NONE else (np.repeat(_BYTES, 256), np.tile(_BYTES, 256))
    table = np.empty(src.shape, np.int8)
    _sdp_int8(src, src2, table, op, rq, zp1, zp2, m1, s1, m2, s2, left_shift)
    table.flags.writeable = False
    return table


def _gather(table: np.ndarray, src: np.ndarray, src2: np.ndarray | None, dst: np.ndarray) -> None:
    if src2 is None:
        index = src.view(np.uint8)
    else:
        index = np.left_shift(src.view(np.uint8), 8, dtype=np.uint16)
        np.bitwise_or(index, src2.view(np.uint8), out=index)
    np.take(table, index, out=dst, mode="clip")


def _offset(x: np.ndarray, zp: int) -> tuple[np.ndarray, int]:
    """(x - zp as a fresh int64 array, a bound on its magnitude)."""
    v = x.astype(np.int64)
    if zp:
        v -= zp
    return v, 128 + abs(zp)


def _as_int32(v: np.ndarray, bound: int) -> np.ndarray:
    """v wrapped to int32 values (as TFLite's int32 arithmetic) unless |v| <= bound is known to fit already."""
    if bound > INT32_MAX:
        return v.astype(np.int32).astype(np.int64)
    return v


def _sdp_int8(src: np.ndarray, src2: np.ndarray | None, dst: np.ndarray, op: int, rq: Requant, zp1: int, zp2: int,
              m1: int, s1: int, m2: int, s2: int, left_shift: int) -> None:
    if op in (SDP_MAX, SDP_MIN):
        r = (np.maximum if op == SDP_MAX else np.minimum)(src, src2)
        np.clip(r, max(rq.act_min, -128), min(rq.act_max, 127), out=r)
        dst[...] = r
        return
    x1, b1 = _offset(src, zp1)  # input_offset + input
    if op == SDP_NONE:
        requantize_owned(_as_int32(x1, b1), rq, out=dst)
        return
    assert src2 is not None
    x2, b2 = _offset(src2, zp2)
    if op == SDP_MUL:
        x1 *= x2
        requantize_owned(_as_int32(x1, b1 * b2), rq, out=dst)
        return
    # ADD / SUB: (x + offset) * 2^left_shift in int32, each rescaled (shift <= 0 in TFLite), then combined.
    x1 <<= left_shift
    x2 <<= left_shift
    x1 = mbqm_inplace(_as_int32(x1, b1 << left_shift), m1, s1)
    x2 = mbqm_inplace(_as_int32(x2, b2 << left_shift), m2, s2)
    if op == SDP_ADD:
        x1 += x2
    else:
        x1 -= x2
    # With non-positive shifts each rescaled term is at most its input in magnitude, so the sum is bounded too.
    bound = (b1 + b2) << left_shift if s1 <= 0 and s2 <= 0 else INT32_MAX + 1
    requantize_owned(_as_int32(x1, bound), rq, out=dst)
