"""PDP engine: max and average pooling over H and W of NHWC tensors.

Pooling is separable: windows are pooled along one spatial axis, then the other. Each 1-D pass visits
only real input positions (padding is never materialised), looping in Python over whichever is fewer,
kernel taps or output positions; so global pooling is one reduction per axis and huge pads cost nothing.
MAX: padding never wins. AVG: divides by the real elements, or by the whole window with count_pad
(padding then counts as 0, or as the zero point for int8). int8 AVG rounds half away from zero as
TFLite's reference_integer_ops::AveragePool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import FLOAT_DTYPES, INT8, check_pairs, check_tensor, dtype_name, first_error
from .conv import conv_output_hw

PDP_MAX, PDP_AVG = 0, 1


def check_pool(op: int, src_dims: Sequence[int], dst_dims: Sequence[int], src_dtype: int, dst_dtype: int,
               kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int]) -> str | None:
    """Submit-time rules of PDP; None if fine, else the reason."""
    if op not in (PDP_MAX, PDP_AVG):
        return f"unknown PDP op {op}"
    err = first_error(
        check_tensor("src", src_dims, src_dtype),
        check_tensor("dst", dst_dims, dst_dtype),
        check_pairs("kernel", kernel, 2, 1),
        check_pairs("stride", stride, 2, 1),
        check_pairs("pad", pad, 4, 0),
    )
    if err:
        return err
    if src_dtype in FLOAT_DTYPES:
        if dst_dtype not in FLOAT_DTYPES:
            return "floating src needs a floating dst"
    elif src_dtype == INT8:
        if dst_dtype != INT8:
            return "int8 src needs an int8 dst"
    else:
        return f"src dtype {dtype_name(src_dtype)} not supported"
    kh, kw = kernel
    pt, pl, pb, pr = pad
    if pt >= kh or pb >= kh or pl >= kw or pr >= kw:
        return "padding not below the window extent (a window could be all padding)"
    n, h, w, c = src_dims
    oh, ow = conv_output_hw((h, w), kernel, stride, (1, 1), pad)
    if oh < 1 or ow < 1:
        return "window larger than the padded input"
    if tuple(dst_dims) != (n, oh, ow, c):
        return f"dst dims {tuple(dst_dims)} != {(n, oh, ow, c)}"
    return None


def _ranges(length: int, k: int, s: int, p0: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of the real input positions under each output's window along one axis."""
    start = np.arange(out_len, dtype=np.int64) * s - p0
    return np.maximum(start, 0), np.minimum(start + k, length)


def _pool_axis(x: np.ndarray, out: np.ndarray, axis: int, k: int, s: int, p0: int, is_max: bool) -> None:
    """out = max or sum of x's real elements under each window along `axis` (1 or 2), out's dtype."""
    length, out_len = x.shape[axis], out.shape[axis]

    def sl(a: np.ndarray, index: slice | int) -> np.ndarray:
        return a[:, index] if axis == 1 else a[:, :, index]

    if k <= out_len:
        # Loop over taps: tap t reads x[o*s - p0 + t] for the outputs o where that index is real.
        taps = []
        for t in range(k):
            o_lo = max(0, -((t - p0) // s))  # ceil((p0 - t) / s)
            o_hi = min(out_len - 1, (length - 1 + p0 - t) // s)
            if o_hi >= o_lo:
                taps.append((o_lo, o_hi, o_lo * s - p0 + t))
        # A tap that every output sees starts the result, which spares a pass filling it.
        first = next((tap for tap in taps if tap[0] == 0 and tap[1] == out_len - 1), None)
        if first is not None:
            taps.remove(first)
            out[...] = sl(x, slice(first[2], first[2] + (out_len - 1) * s + 1, s))
        elif is_max:
            out[...] = -np.inf if out.dtype.kind == "f" else np.iinfo(out.dtype).min
        else:
            out[...] = 0
        ufunc = np.maximum if is_max else np.add
        for o_lo, o_hi, i_lo in taps:
            dst = sl(out, slice(o_lo, o_hi + 1))
            ufunc(dst, sl(x, slice(i_lo, i_lo + (o_hi - o_lo) * s + 1, s)), out=dst, dtype=out.dtype)
    else:
        # Loop over outputs: one reduction over each window's real span.
        lo, hi = _ranges(length, k, s, p0, out_len)
        for o in range(out_len):
            window = sl(x, slice(int(lo[o]), int(hi[o])))
            if is_max:
                np.max(window, axis=axis, out=sl(out, o))
            else:
                np.sum(window, axis=axis, out=sl(out, o), dtype=out.dtype)


def pool2d(src: np.ndarray, dst: np.ndarray, *, op: int, kernel: tuple[int, int], stride: tuple[int, int],
           pad: tuple[int, int, int, int] = (0, 0, 0, 0), count_pad: bool = False, zero_point: int = 0) -> None:
    """PDP: dst[N,OH,OW,C] = max/avg pool of src[N,H,W,C] (OH, OW by the CONV formula, dilation 1).

    zero_point only matters for int8 AVG with count_pad: padded positions then hold the zero point (real 0).
    """
    n, h, w, c = src.shape
    kh, kw = int(kernel[0]), int(kernel[1])
    sh, sw = int(stride[0]), int(stride[1])
    pt, pl, pb, pr = (int(p) for p in pad)
    oh, ow = conv_output_hw((h, w), (kh, kw), (sh, sw), (1, 1), (pt, pl, pb, pr))
    if dst.shape != (n, oh, ow, c):
        raise ValueError(f"dst shape {dst.shape} != {(n, oh, ow, c)}")
    if op not in (PDP_MAX, PDP_AVG):
        raise ValueError(f"unknown PDP op {op}")
    cnt_h = np.diff(np.stack(_ranges(h, kh, sh, pt, oh)), axis=0)[0]
    cnt_w = np.diff(np.stack(_ranges(w, kw, sw, pl, ow)), axis=0)[0]
    if (cnt_h <= 0).any() or (cnt_w <= 0).any():
        raise ValueError("a pooling window covers only padding")
    is_max = op == PDP_MAX
    quantized = src.dtype == np.int8
    if is_max:
        wdt = src.dtype
    else:
        # int8 sums are integers far below 2^53: exact in fp64, where the rounding below is cheap
        wdt = np.dtype(np.float64) if quantized else np.dtype(np.float32)
    # Pool first along the axis that shrinks the intermediate most; the intermediate is a fresh array,
    # so the second pass may write dst directly even if dst overlaps src.
    if oh * w <= h * ow:
        mid = np.empty((n, oh, w, c), wdt)
        _pool_axis(src, mid, 1, kh, sh, pt, is_max)
        second = (mid, 2, kw, sw, pl)
    else:
        mid = np.empty((n, h, ow, c), wdt)
        _pool_axis(src, mid, 2, kw, sw, pl, is_max)
        second = (mid, 1, kh, sh, pt)
    x, axis, k, s, p0 = second
    if is_max:
        if dst.dtype == wdt:
            _pool_axis(x, dst, axis, k, s, p0, True)
        else:
            res = np.empty(dst.shape, wdt)
            _pool_axis(x, res, axis, k, s, p0, True)
            dst[...] = res
        return
    acc = np.empty(dst.shape, wdt)
    _pool_axis(x, acc, axis, k, s, p0, False)
    real = (cnt_h[:, None] * cnt_w[None, :])[None, :, :, None]
    count = np.int64(kh * kw) if count_pad else real
    if quantized:
        if count_pad and zero_point:
            acc += (kh * kw - real) * zero_point
        # TFLite: acc > 0 ? (acc + count/2) / count : (acc - count/2) / count, C division (toward zero),
        # i.e. sign(acc) * floor((|acc| + count/2) / count). The fp64 quotient of integers below 2^53 never
        # rounds across an integer, so floor() of it is the exact integer quotient.
        q = np.abs(acc)
        q += count // 2
        q /= count
        np.floor(q, out=q)
        np.copysign(q, acc, out=q)  # (a masked negate is far slower)
        np.clip(q, -128, 127, out=q)
        dst[...] = q
        return
    acc /= count.astype(np.float32) if isinstance(count, np.ndarray) else np.float32(count)
    dst[...] = acc
