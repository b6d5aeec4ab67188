"""CONV engine: 2-D convolution (NHWC, OHWI weights) and GEMM, float and TFLite int8.

Convolution is im2col + BLAS: windows are strided views (as_strided) of a padded copy of the input, one
matmul per group over blocks of output pixels, so temporaries stay around CHUNK_BYTES. Depthwise
(C_in / groups == 1) sweeps the KH*KW taps with vectorised multiply-adds instead.

int8 is exact and still runs on fp32 BLAS: the offset operands (x - zp_x), (w - zp_w) are small integers,
and K is cut into blocks short enough that every partial sum of a block stays below 2^24 in magnitude (so
fp32 represents it exactly, whatever order BLAS adds in); the blocks' exact results are summed in fp64
(exact below 2^53) and then taken as int32, wrapping as TFLite's int32 accumulator would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import activation as _act
from ._common import (
    CHUNK_BYTES,
    FLOAT_DTYPES,
    INT8,
    INT32,
    apply_channels,
    as_2d_view,
    blas_operand,
    blasable,
    block_slices,
    check_pairs,
    check_tensor,
    detach,
    dtype_name,
    first_error,
    out_size,
    pixel_chunks,
)
from .activation import NO_ACTIVATION, Activation
from .quant import Requant, requantize_owned, wrap_int32

# Padded copies larger than this many times the input (plus a little) switch to gathered windows, so absurd
# padding cannot make the engine allocate far more than the tensors it was given.
_PAD_BLOWUP = 2
_PAD_SLACK = 4096
# The int8 output stage makes about a dozen passes over int64 temporaries: it runs on blocks of this many
# accumulators, which stay in a core's L2 (SqueezeNet's first conv, 788K outputs: 9.2 -> 3.7 ms).
_REQUANT_BLOCK = 1 << 16
_DEPTHWISE_CHUNK = 1 << 18  # accumulator elements per depthwise block: stays in cache across the taps


def conv_output_hw(src_hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                   pad: Sequence[int]) -> tuple[int, int]:
    """(OH, OW) of a convolution or pooling; a value <= 0 means no window fits."""
    return (out_size(src_hw[0], kernel[0], stride[0], dilation[0], pad[0], pad[2]),
            out_size(src_hw[1], kernel[1], stride[1], dilation[1], pad[1], pad[3]))


# --------------------------------------------------------------------------------------------------------------
# Validation


def _check_int_output(src_dtype: int, dst_dtype: int, act_fn: int, has_requant: bool) -> str | None:
    """Dtype rules shared by CONV and GEMM."""
    if src_dtype in FLOAT_DTYPES:
        if dst_dtype not in FLOAT_DTYPES:
            return f"floating src needs a floating dst, got {dtype_name(dst_dtype)}"
        if has_requant:
            return "requant given for a floating dst"
        return _act.check_activation(act_fn, True)
    if src_dtype != INT8:
        return f"src dtype {dtype_name(src_dtype)} not supported"
    if dst_dtype == INT8:
        if not has_requant:
            return "int8 dst needs a requant"
    elif dst_dtype == INT32:
        if has_requant:
            return "requant given for an int32 (raw accumulator) dst"
    else:
        return f"int8 src needs an int8 or int32 dst, got {dtype_name(dst_dtype)}"
    return _act.check_activation(act_fn, False)


def check_conv(src_dims: Sequence[int], weight_dims: Sequence[int], dst_dims: Sequence[int], src_dtype: int,
               weight_dtype: int, dst_dtype: int, stride: Sequence[int], dilation: Sequence[int],
               pad: Sequence[int], groups: int, act_fn: int, has_requant: bool) -> str | None:
    """Submit-time rules of CONV; None if the packet is fine, else why it is EINVAL."""
    err = first_error(
        check_tensor("src", src_dims, src_dtype),
        check_tensor("weight", weight_dims, weight_dtype),
        check_tensor("dst", dst_dims, dst_dtype),
        check_pairs("stride", stride, 2, 1),
        check_pairs("dilation", dilation, 2, 1),
        check_pairs("pad", pad, 4, 0),
    )
    if err:
        return err
    if weight_dtype != src_dtype:
        return "weight dtype differs from src"
    err = _check_int_output(src_dtype, dst_dtype, act_fn, has_requant)
    if err:
        return err
    n, h, w, cin = src_dims
    cout, kh, kw, cig = weight_dims
    if groups < 1 or cin % groups or cout % groups:
        return f"groups {groups} does not divide C_in {cin} and C_out {cout}"
    if cig != cin // groups:
        return f"weight dims[3] {cig} != C_in / groups {cin // groups}"
    oh, ow = conv_output_hw((h, w), (kh, kw), stride, dilation, pad)
    if oh < 1 or ow < 1:
        return "kernel extent larger than the padded input"
    if tuple(dst_dims) != (n, oh, ow, cout):
        return f"dst dims {tuple(dst_dims)} != {(n, oh, ow, cout)}"
    return None


def check_gemm(a_dims: Sequence[int], b_dims: Sequence[int], dst_dims: Sequence[int], a_dtype: int, b_dtype: int,
               dst_dtype: int, transpose_b: bool, act_fn: int, has_requant: bool) -> str | None:
    """Submit-time rules of GEMM; None if the packet is fine, else why it is EINVAL."""
    err = first_error(
        check_tensor("a", a_dims, a_dtype),
        check_tensor("b", b_dims, b_dtype),
        check_tensor("dst", dst_dims, dst_dtype),
    )
    if err:
        return err
    if b_dtype != a_dtype:
        return "b dtype differs from a"
    err = _check_int_output(a_dtype, dst_dtype, act_fn, has_requant)
    if err:
        return err
    b0, b1, m, k = a_dims
    if transpose_b:
        bb0, bb1, n, kb = b_dims
    else:
        bb0, bb1, kb, n = b_dims
    if bb0 not in (1, b0) or bb1 not in (1, b1):
        return f"b batch dims {(bb0, bb1)} neither 1 nor a's {(b0, b1)}"
    if kb != k:
        return f"inner dims differ: a has {k}, b has {kb}"
    if tuple(dst_dims) != (b0, b1, m, n):
        return f"dst dims {tuple(dst_dims)} != {(b0, b1, m, n)}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Execution


class _Windows:
    """The input as the engine reads windows of it.

    Normally a padded copy (or the source itself when no copy is needed) read through strided views; when
    the padding would make that copy much larger than the input, the source plus one zero row and column,
    read with index maps (every out-of-range position points at the zero row/column).
    """

    def __init__(self, src: np.ndarray, dst: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], pad: tuple[int, int, int, int], out_hw: tuple[int, int],
                 dtype: type[np.generic], offset: int) -> None:
        n, h, w, c = src.shape
        pt, pl, pb, pr = pad
        hp, wp = h + pt + pb, w + pl + pr
        self.kernel, self.stride, self.dilation = kernel, stride, dilation
        self.strided = hp * wp <= _PAD_BLOWUP * h * w + _PAD_SLACK
        if self.strided:
            if not any(pad) and src.dtype == dtype and not offset and not np.may_share_memory(src, dst):
                self.x = src
            else:
                self.x = np.zeros((n, hp, wp, c), dtype)
                _store_offset(self.x[:, pt:pt + h, pl:pl + w], src, offset)
        else:
            self.x = np.zeros((n, h + 1, w + 1, c), dtype)
            _store_offset(self.x[:, :h, :w], src, offset)
            (oh, ow), (kh, kw) = out_hw, kernel
            ym = np.arange(oh)[:, None] * stride[0] + np.arange(kh)[None, :] * dilation[0] - pt
            xm = np.arange(ow)[:, None] * stride[1] + np.arange(kw)[None, :] * dilation[1] - pl
            ym[(ym < 0) | (ym >= h)] = h
            xm[(xm < 0) | (xm >= w)] = w
            self.ym, self.xm = ym, xm

    def windows(self, n0: int, n1: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """[n, rows, cols, KH, KW, C] windows of the output box (a view when strided)."""
        kh, kw = self.kernel
        if not self.strided:
            return self.x[n0:n1][:, self.ym[r0:r1, None, :, None], self.xm[None, c0:c1, None, :]]
        sh, sw = self.stride
        dh, dw = self.dilation
        base = self.x[n0:n1, r0 * sh:, c0 * sw:]
        s_n, s_h, s_w, s_c = base.strides
        return as_strided(base, shape=(n1 - n0, r1 - r0, c1 - c0, kh, kw, base.shape[3]),
                          strides=(s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c), writeable=False)

    def tap(self, n0: int, n1: int, r0: int, r1: int, c0: int, c1: int, i: int, j: int) -> np.ndarray:
        """[n, rows, cols, C]: the input under kernel tap (i, j) for every output of the box."""
        if not self.strided:
            return self.x[n0:n1][:, self.ym[r0:r1, i]][:, :, self.xm[c0:c1, j]]
        sh, sw = self.stride
        dh, dw = self.dilation
        y0, x0 = r0 * sh + i * dh, c0 * sw + j * dw
        return self.x[n0:n1, y0:y0 + (r1 - r0 - 1) * sh + 1:sh, x0:x0 + (c1 - c0 - 1) * sw + 1:sw]


def _store_offset(out: np.ndarray, src: np.ndarray, offset: int) -> None:
    """out = src - offset, computed in out's dtype (no int8 overflow)."""
    if offset:
        np.subtract(src, offset, out=out, dtype=out.dtype)
    else:
        np.copyto(out, src, casting="unsafe")


def _weights(weight: np.ndarray, zero_point: int, dtype: type[np.generic]) -> np.ndarray:
    """The weights as the kernels read them: fp32 weights as they lie in the BO (deep layers have megabytes
    of them, and a copy per call would cost more than the matmul), anything else converted once."""
    if weight.dtype == dtype and not zero_point:
        return weight
    converted = np.empty(weight.shape, dtype)
    _store_offset(converted, weight, zero_point)
    return converted


def _exact_k_block(x: np.ndarray, x_zp: int, w: np.ndarray, w_zp: int) -> int:
    """Longest K run whose int8 dot products have every partial sum below 2^24, i.e. exact in fp32."""
    if x.size == 0 or w.size == 0:
        return 1 << 62
    mx = max(abs(int(x.max()) - x_zp), abs(int(x.min()) - x_zp), 1)
    mw = max(abs(int(w.max()) - w_zp), abs(int(w.min()) - w_zp), 1)
    return max(1, ((1 << 24) - 1) // (mx * mw))


def _matmul(lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, k_block: int) -> None:
    """out = lhs @ rhs (fp32 operands); with K above k_block, in exact fp32 blocks summed into an fp64 out."""
    k = lhs.shape[-1]
    if k <= k_block:
        np.matmul(lhs, rhs, out=out)
        return
    out[...] = 0
    part = np.empty(out.shape, np.float32)
    for k0 in range(0, k, k_block):
        np.matmul(lhs[..., k0:k0 + k_block], rhs[..., k0:k0 + k_block, :], out=part)
        out += part


def _epilogue(acc: np.ndarray, dst: np.ndarray, bias: np.ndarray | None, act: Activation,
              requant: Requant | None, quantized: bool) -> None:
    """Bias, then activation (float) or int32 wrap + requantisation (int8), stored into dst (acc may be dst)."""
    if quantized:
        if dst.dtype == np.int32:
            requant = None  # an int32 dst takes the raw accumulators
        elif requant is None:
            raise ValueError("int8 dst needs a requant")
        for block in block_slices(acc.shape, _REQUANT_BLOCK):
            _integer_output(acc[block], dst[block], bias, requant)
        return
    if bias is not None:
        apply_channels(np.add, acc, bias)
    _act.apply(acc, act)
    if acc is not dst:
        dst[...] = acc


def _integer_output(acc: np.ndarray, dst: np.ndarray, bias: np.ndarray | None, requant: Requant | None) -> None:
    """int32 accumulation semantics: the sum wraps like the int32 register it is in TFLite. An fp64
    accumulator may hold exact sums beyond int32 and wraps via int64; fp32 sums are exact below 2^24 and
    convert straight to int32 (a vector instruction, where fp -> int64 is a scalar loop), as do int32 ones
    (depthwise), which wrapped as they were summed."""
    acc_i = wrap_int32(acc.astype(np.int64)) if acc.dtype == np.float64 else acc.astype(np.int32)
    if bias is not None:
        apply_channels(np.add, acc_i, bias)  # int32 + int32 wraps, as in TFLite
    if requant is None:
        dst[...] = acc_i
    else:
        requantize_owned(acc_i, requant, out=dst)


def conv2d(src: np.ndarray, weight: np.ndarray, dst: np.ndarray, *, bias: np.ndarray | None = None,
           stride: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1),
           pad: tuple[int, int, int, int] = (0, 0, 0, 0), groups: int = 1, act: Activation = NO_ACTIVATION,
           requant: Requant | None = None, src_zero_point: int = 0, weight_zero_point: int = 0) -> None:
    """CONV: dst[N,OH,OW,Co] = conv(src[N,H,W,Ci], weight[Co,KH,KW,Ci/groups]) + bias, then act or requant.

    Float: fp32/fp16 in any mix, computed in fp32, rounded once on store. int8 src+weight: exact int32
    accumulation of (x - zp_x)(w - zp_w) + int32 bias, then requant into int8 dst or raw into int32 dst.
    """
    n, h, w, cin = src.shape
    cout, kh, kw, cig = weight.shape
    stride, dilation = (int(stride[0]), int(stride[1])), (int(dilation[0]), int(dilation[1]))
    pad = (int(pad[0]), int(pad[1]), int(pad[2]), int(pad[3]))
    oh, ow = conv_output_hw((h, w), (kh, kw), stride, dilation, pad)
    if groups < 1 or cin % groups or cout % groups or cig != cin // groups:
        raise ValueError("groups do not match the channel counts")
    if dst.shape != (n, oh, ow, cout):
        raise ValueError(f"dst shape {dst.shape} != {(n, oh, ow, cout)}")
    quantized = src.dtype == np.int8
    if quantized != (weight.dtype == np.int8):
        raise ValueError("src and weight must both be int8 or both floating")
    weight = detach(weight, dst)
    bias = detach(bias, dst)
    if bias is not None and bias.shape[-1] != cout:
        raise ValueError("bias needs C_out entries")
    depthwise = groups > 1 and cig == 1
    x_zp = src_zero_point if quantized else 0
    w_zp = weight_zero_point if quantized else 0
    cdt: type[np.generic] = np.int32 if depthwise and quantized else np.float32
    wq = _weights(weight, w_zp, cdt)
    win = _Windows(src, dst, (kh, kw), stride, dilation, pad, (oh, ow), cdt, x_zp)
    if depthwise:
        _depthwise(win, wq, dst, groups, bias, act, requant, quantized, cdt)
    else:
        k_block = _exact_k_block(src, x_zp, weight, w_zp) if quantized else 1 << 62
        _im2col(win, wq, dst, groups, bias, act, requant, quantized, k_block)


def _im2col(win: _Windows, wq: np.ndarray, dst: np.ndarray, groups: int, bias: np.ndarray | None,
            act: Activation, requant: Requant | None, quantized: bool, k_block: int) -> None:
    n, oh, ow, cout = dst.shape
    _, kh, kw, cig = wq.shape
    k, cog = kh * kw * cig, cout // groups
    # [groups, K, cog]: each group's weights as the right-hand matrix, K ordered (kh, kw, ci) like the windows;
    # a column-major view BLAS reads as it is.
    wmat = blas_operand(wq.reshape(groups, cog, k).transpose(0, 2, 1))
    acc_dtype = np.float64 if k > k_block else np.float32
    direct = acc_dtype == np.float32 and dst.dtype == np.float32 and not quantized
    pixels = CHUNK_BYTES // (4 * k + 8 * cout)
    for n0, n1, r0, r1, c0, c1 in pixel_chunks(n, oh, ow, pixels):
        cols = win.windows(n0, n1, r0, r1, c0, c1)
        box = dst[n0:n1, r0:r1, c0:c1]
        m = box.shape[0] * box.shape[1] * box.shape[2]
        out2d = as_2d_view(box) if direct else None
        if out2d is not None and blasable(out2d) and (_contiguous_rows(out2d) or not _has_epilogue(bias, act)):
            acc, acc2d = box, out2d
        else:
            acc = np.empty(box.shape, acc_dtype)
            acc2d = acc.reshape(m, cout)
        for g in range(groups):
            lhs = cols[..., g * cig:(g + 1) * cig].reshape(m, k)
            _matmul(blas_operand(lhs), wmat[g], acc2d[:, g * cog:(g + 1) * cog], k_block)
        _epilogue(acc, box, bias, act, requant, quantized)


def _has_epilogue(bias: np.ndarray | None, act: Activation) -> bool:
    return bias is not None or act.fn != _act.ACT_NONE


def _contiguous_rows(out2d: np.ndarray) -> bool:
    """Whether a (pixels, channels) output is one block. A channel slice of a wider tensor (a concat input
    produced in place) is not: its epilogue would go row by row, slower than computing into a temporary and
    copying the finished rows over."""
    return out2d.strides[0] == out2d.shape[1] * out2d.itemsize


def _depthwise(win: _Windows, wq: np.ndarray, dst: np.ndarray, groups: int, bias: np.ndarray | None,
               act: Activation, requant: Requant | None, quantized: bool, cdt: type[np.generic]) -> None:
    n, oh, ow, cout = dst.shape
    _, kh, kw, _ = wq.shape
    mult = cout // groups  # depth multiplier: output channel o reads input channel o // mult
    taps = wq[:, :, :, 0].reshape(groups, mult, kh, kw)
    for n0, n1, r0, r1, c0, c1 in pixel_chunks(n, oh, ow, _DEPTHWISE_CHUNK // cout):
        shape = (n1 - n0, r1 - r0, c1 - c0, groups, mult)
        acc = np.zeros(shape, cdt)
        tmp = np.empty(shape, cdt)
        for i in range(kh):
            for j in range(kw):
                x = win.tap(n0, n1, r0, r1, c0, c1, i, j)
                np.multiply(x[..., None], taps[:, :, i, j], out=tmp)
                acc += tmp
        _epilogue(acc.reshape((*shape[:3], cout)), dst[n0:n1, r0:r1, c0:c1], bias, act, requant, quantized)


def gemm(a: np.ndarray, b: np.ndarray, dst: np.ndarray, *, bias: np.ndarray | None = None,
         transpose_b: bool = False, act: Activation = NO_ACTIVATION, requant: Requant | None = None,
         a_zero_point: int = 0, b_zero_point: int = 0) -> None:
    """GEMM: dst[B0,B1,M,N] = a[B0,B1,M,K] x b[B0|1,B1|1,K,N] (b given as [..,N,K] if transpose_b) + bias[N].

    Then act (float) or requant (int8 dst) / raw int32 accumulators (int32 dst), per column like CONV.
    """
    b0, b1, m, k = a.shape
    bm = b.swapaxes(2, 3) if transpose_b else b
    if bm.shape[2] != k or bm.shape[0] not in (1, b0) or bm.shape[1] not in (1, b1):
        raise ValueError(f"b shape {b.shape} does not fit a {a.shape}")
    n = bm.shape[3]
    if dst.shape != (b0, b1, m, n):
        raise ValueError(f"dst shape {dst.shape} != {(b0, b1, m, n)}")
    quantized = a.dtype == np.int8
    if quantized != (b.dtype == np.int8):
        raise ValueError("a and b must both be int8 or both floating")
    a_zp = a_zero_point if quantized else 0
    b_zp = b_zero_point if quantized else 0
    k_block = _exact_k_block(a, a_zp, bm, b_zp) if quantized else 1 << 62
    acc_dtype = np.float64 if k > k_block else np.float32
    bias = detach(bias, dst)
    if bias is not None and bias.shape[-1] != n:
        raise ValueError("bias needs N entries")
    f32 = np.float32
    if bm.dtype == f32 and not b_zp and not np.may_share_memory(bm, dst):
        bq = blas_operand(bm)
    else:
        bq = np.empty(bm.shape, f32)
        _store_offset(bq, bm, b_zp)
    a_ready = a.dtype == f32 and not a_zp and not np.may_share_memory(a, dst)
    direct = not quantized and dst.dtype == f32 and blasable(dst)
    rows = max(1, CHUNK_BYTES // (8 * b0 * b1 * (k + n)))
    for m0 in range(0, m, rows):
        rs = slice(m0, min(m, m0 + rows))
        if a_ready:
            lhs = blas_operand(a[:, :, rs])
        else:
            lhs = np.empty((b0, b1, rs.stop - rs.start, k), f32)
            _store_offset(lhs, a[:, :, rs], a_zp)
        box = dst[:, :, rs]
        acc = box if direct else np.empty(box.shape, acc_dtype)
        _matmul(lhs, bq, acc, k_block)
        _epilogue(acc, box, bias, act, requant, quantized)
