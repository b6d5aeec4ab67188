"""Engine math (emudev.engine.ops) against onnxruntime (float) and transcribed TFLite reference kernels (int8).

Float ops run tiny single-op ONNX graphs in onnxruntime, converting NHWC <-> NCHW and OHWI <-> OIHW here.
int8 ops must match, bit for bit, scalar Python transcriptions of TFLite's reference kernels
(tensorflow/lite/kernels/internal/reference/integer_ops/{conv,depthwise_conv,fully_connected,add,mul,
pooling}.h and common.h's MultiplyByQuantizedMultiplier), with int32 registers emulated by i32().
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from emudev.engine.ops import DTYPES, FP16, FP32, INT8, INT32, activation, bdma, cdp, conv, pdp, quant, rubik, sdp
from emudev.engine.ops._common import apply_channels, apply_constant, block_slices, unit_runs
from emudev.engine.ops.activation import Activation
from emudev.engine.ops.quant import Requant

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:  # the int8 and view tests need neither
    ort = None

needs_ort = pytest.mark.skipif(ort is None, reason="onnx / onnxruntime not installed")

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
RNG = np.random.default_rng(20240611)

# ----------------------------------------------------------------------------------------------------------------
# onnxruntime helpers


def run_onnx(nodes: list, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = ("y",),
             out_type: int | None = None) -> list[np.ndarray]:
    """Run a graph of onnx nodes on the given named inputs; every input is a graph input."""
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
            np.dtype(np.int8): TensorProto.INT8}
    g_in = [helper.make_tensor_value_info(k, elem[v.dtype], list(v.shape)) for k, v in inputs.items()]
    g_out = [helper.make_tensor_value_info(k, out_type or TensorProto.FLOAT, None) for k in outputs]
    graph = helper.make_graph(nodes, "t", g_in, g_out)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(list(outputs), inputs)


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def act_nodes(act: Activation, src: str, dst: str) -> list:
    """ONNX nodes computing the activation from src into dst."""
    fn = act.fn
    if fn == activation.ACT_NONE:
        return [helper.make_node("Identity", [src], [dst])]
    if fn == activation.ACT_RELU:
        return [helper.make_node("Relu", [src], [dst])]
    if fn == activation.ACT_LEAKY_RELU:
        return [helper.make_node("LeakyRelu", [src], [dst], alpha=act.alpha)]
    if fn == activation.ACT_SIGMOID:
        return [helper.make_node("Sigmoid", [src], [dst])]
    if fn == activation.ACT_TANH:
        return [helper.make_node("Tanh", [src], [dst])]
    lo, hi = (0.0, 6.0) if fn == activation.ACT_RELU6 else (act.clip_min, act.clip_max)
    consts = [
        helper.make_node("Constant", [], [f"{dst}_lo"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [lo])),
        helper.make_node("Constant", [], [f"{dst}_hi"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [hi])),
    ]
    return [*consts, helper.make_node("Clip", [src, f"{dst}_lo", f"{dst}_hi"], [dst])]


def rand(shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def rand_i8(shape: tuple[int, ...], lo: int = -128, hi: int = 127) -> np.ndarray:
    return RNG.integers(lo, hi + 1, size=shape).astype(np.int8)


def guarded(shape: tuple[int, ...], dtype: type[np.generic], fill: float | int) -> tuple[np.ndarray, np.ndarray]:
    """(buffer, view): a non-contiguous view of `shape` inside a sentinel-filled buffer (a guard all around)."""
    n = len(shape)
    big = tuple(2 * d + 3 for d in shape)
    buf = np.full(big, fill, dtype=dtype)
    view = buf[(*(slice(1, 1 + 2 * d, 2) for d in shape[: n - 1]), slice(2, 2 + shape[-1]))]
    assert view.shape == shape and not view.flags.c_contiguous
    return buf, view


def guard_untouched(buf: np.ndarray, view: np.ndarray, fill: float | int) -> bool:
    """True if every element of buf outside view still holds the sentinel."""
    saved = view.copy()
    view[...] = fill
    ok = bool(np.all(buf == fill))
    view[...] = saved
    return ok


# ----------------------------------------------------------------------------------------------------------------
# TFLite reference kernels (scalar, transcribed)


def i32(v: int) -> int:
    """Wrap to int32 as a C int32_t register would."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul."""
    overflow = a == b and a == I32_MIN
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = ab + nudge
    hi = q // (1 << 31) if q >= 0 else -((-q) // (1 << 31))  # C++ integer division truncates
    return I32_MAX if overflow else i32(hi)


def rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT."""
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm(x: int, m: int, shift: int) -> int:
    """tflite MultiplyByQuantizedMultiplier (double rounding)."""
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    return rdbpot(srdhm(i32(x * (1 << left)), m), right)


def clamp(v: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, v))


def ref_conv_int8(x, w, bias, stride, dil, pad, groups, x_zp, w_zp, mult, shift, out_zp, act_min, act_max, raw):
    """reference_integer_ops::ConvPerChannel (grouped), with a filter offset as the legacy uint8 kernel."""
    n, h, wd, _ = x.shape
    co, kh, kw, cig = w.shape
    oh, ow = conv.conv_output_hw((h, wd), (kh, kw), stride, dil, pad)
    fpg = co // groups
    xl, wl = x.tolist(), w.tolist()
    out = np.zeros((n, oh, ow, co), np.int64)
    for b, oy, ox, oc in itertools.product(range(n), range(oh), range(ow), range(co)):
        group = oc // fpg
        in_y0, in_x0 = oy * stride[0] - pad[0], ox * stride[1] - pad[1]
        acc = 0
        for fy in range(kh):
            iy = in_y0 + dil[0] * fy
            for fx in range(kw):
                ix = in_x0 + dil[1] * fx
                if not (0 <= ix < wd and 0 <= iy < h):
                    continue
                for c in range(cig):
                    acc = i32(acc + (wl[oc][fy][fx][c] - w_zp) * (xl[b][iy][ix][c + group * cig] - x_zp))
        if bias is not None:
            acc = i32(acc + int(bias[oc]))
        if not raw:
            acc = mbqm(acc, int(mult[oc]), int(shift[oc]))
            acc = clamp(i32(acc + out_zp), act_min, act_max)
        out[b, oy, ox, oc] = acc
    return out


def ref_depthwise_int8(x, w_ohwi, bias, stride, dil, pad, x_zp, w_zp, mult, shift, out_zp, act_min, act_max):
    """reference_integer_ops::DepthwiseConvPerChannel (TFLite filter [1, KH, KW, C_out]), with a filter offset
    as the legacy uint8 kernel."""
    filt = w_ohwi[:, :, :, 0].transpose(1, 2, 0)[None].tolist()
    n, h, wd, cin = x.shape
    co, kh, kw, _ = w_ohwi.shape
    depth_multiplier = co // cin
    oh, ow = conv.conv_output_hw((h, wd), (kh, kw), stride, dil, pad)
    xl = x.tolist()
    out = np.zeros((n, oh, ow, co), np.int64)
    for b, oy, ox, ic in itertools.product(range(n), range(oh), range(ow), range(cin)):
        for m in range(depth_multiplier):
            oc = m + ic * depth_multiplier
            in_y0, in_x0 = oy * stride[0] - pad[0], ox * stride[1] - pad[1]
            acc = 0
            for fy in range(kh):
                for fx in range(kw):
                    iy, ix = in_y0 + dil[0] * fy, in_x0 + dil[1] * fx
                    if 0 <= ix < wd and 0 <= iy < h:
                        acc = i32(acc + (filt[0][fy][fx][oc] - w_zp) * (xl[b][iy][ix][ic] - x_zp))
            if bias is not None:
                acc = i32(acc + int(bias[oc]))
            acc = mbqm(acc, int(mult[oc]), int(shift[oc]))
            out[b, oy, ox, oc] = clamp(i32(acc + out_zp), act_min, act_max)
    return out


def ref_fully_connected_int8(x, filt, bias, x_zp, f_zp, mult, shift, out_zp, act_min, act_max):
    """reference_integer_ops::FullyConnected: x [batches, K], filter [out, K], per-tensor requant."""
    batches, depth = x.shape
    xl, fl = x.tolist(), filt.tolist()
    out = np.zeros((batches, filt.shape[0]), np.int64)
    for b, oc in itertools.product(range(batches), range(filt.shape[0])):
        acc = 0
        for d in range(depth):
            acc = i32(acc + (fl[oc][d] - f_zp) * (xl[b][d] - x_zp))
        if bias is not None:
            acc = i32(acc + int(bias[oc]))
        acc = mbqm(acc, mult, shift)
        out[b, oc] = clamp(i32(acc + out_zp), act_min, act_max)
    return out


def ref_add_sub_int8(a, b, sub, zp1, zp2, m1, s1, m2, s2, left_shift, out_m, out_s, out_zp, act_min, act_max):
    """reference_integer_ops AddElementwise / SubElementwise (MultiplyByQuantizedMultiplierSmallerThanOneExp)."""
    out = []
    for x1, x2 in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
        sh1 = i32((x1 - zp1) * (1 << left_shift))
        sh2 = i32((x2 - zp2) * (1 << left_shift))
        sc1 = rdbpot(srdhm(sh1, m1), -s1)
        sc2 = rdbpot(srdhm(sh2, m2), -s2)
        raw = i32(sc1 - sc2) if sub else i32(sc1 + sc2)
        r = i32(rdbpot(srdhm(raw, out_m), -out_s) + out_zp)
        out.append(clamp(r, act_min, act_max))
    return np.array(out, np.int64).reshape(a.shape)


def ref_mul_int8(a, b, zp1, zp2, out_m, out_s, out_zp, act_min, act_max):
    """reference_integer_ops::MulElementwise."""
    out = []
    for x1, x2 in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
        r = out_zp + mbqm(i32((x1 - zp1) * (x2 - zp2)), out_m, out_s)
        out.append(clamp(r, act_min, act_max))
    return np.array(out, np.int64).reshape(a.shape)


def ref_pool_int8(x, op, kernel, stride, pad, count_pad=False, zp=0):
    """reference_integer_ops::AveragePool / MaxPool (pad top/left explicit, bottom/right by output size)."""
    n, h, w, c = x.shape
    oh, ow = conv.conv_output_hw((h, w), kernel, stride, (1, 1), pad)
    xl = x.tolist()
    out = np.zeros((n, oh, ow, c), np.int64)
    for b, oy, ox, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        in_y0, in_x0 = oy * stride[0] - pad[0], ox * stride[1] - pad[1]
        fy0, fy1 = max(0, -in_y0), min(kernel[0], h - in_y0)
        fx0, fx1 = max(0, -in_x0), min(kernel[1], w - in_x0)
        vals = [xl[b][in_y0 + fy][in_x0 + fx][ch] for fy in range(fy0, fy1) for fx in range(fx0, fx1)]
        if op == pdp.PDP_MAX:
            out[b, oy, ox, ch] = clamp(max(vals), -128, 127)
            continue
        acc, count = sum(vals), len(vals)
        if count_pad:
            acc += (kernel[0] * kernel[1] - count) * zp
            count = kernel[0] * kernel[1]
        # C++ integer division truncates toward zero
        acc = (acc + count // 2) // count if acc > 0 else -((count // 2 - acc) // count)
        out[b, oy, ox, ch] = clamp(acc, -128, 127)
    return out


def random_requant(c: int | None, act_min: int = -128, act_max: int = 127, zp: int | None = None) -> Requant:
    """Per-channel (c given) or per-tensor requant from random real scales, some > 1 (positive shifts)."""
    reals = np.exp(RNG.uniform(np.log(1e-4), np.log(3.0), size=c or 1))
    pairs = [quant.quantize_multiplier(float(r)) for r in reals]
    mult = np.array([p[0] for p in pairs], np.int32)
    shift = np.array([p[1] for p in pairs], np.int32)
    zp = int(RNG.integers(-20, 21)) if zp is None else zp
    if c is None:
        return Requant(int(mult[0]), int(shift[0]), act_min, act_max, zp)
    return Requant(mult, shift, act_min, act_max, zp)


def per_channel(rq: Requant, c: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.broadcast_to(np.asarray(rq.multiplier), (c,)), np.broadcast_to(np.asarray(rq.shift), (c,)))


# ----------------------------------------------------------------------------------------------------------------
# quant


def test_dtype_map() -> None:
    assert DTYPES == {FP32: np.float32, FP16: np.float16, INT8: np.int8, INT32: np.int32}


@pytest.mark.parametrize(
    ("real", "expected"),
    [
        (0.0, (0, 0)),
        (0.5, (1 << 30, 0)),
        (1.0, (1 << 30, 1)),
        (0.25, (1 << 30, -1)),
        (0.75, (1610612736, 0)),
        (1 / 3, (1431655765, -1)),
        (-0.5, (-(1 << 30), 0)),
        (1.0 - 2.0**-40, (1 << 30, 1)),  # rounds up to 2^31: halved, shift + 1
        (2.0**-40, (0, 0)),  # shift below -31 flushes to zero
        (3.0, (1610612736, 2)),
        (0.0078125, (1 << 30, -6)),
    ],
)
def test_quantize_multiplier_known(real: float, expected: tuple[int, int]) -> None:
    assert quant.quantize_multiplier(real) == expected


def test_quantize_multiplier_approximates() -> None:
    for r in np.exp(RNG.uniform(-20, 5, size=200)):
        m, s = quant.quantize_multiplier(float(r))
        assert 1 << 30 <= m < 1 << 31
        assert math.isclose(m * 2.0 ** (s - 31), r, rel_tol=2**-30)


def test_mbqm_matches_reference() -> None:
    xs = np.concatenate([
        RNG.integers(I32_MIN, I32_MAX, size=300, endpoint=True),
        [I32_MIN, I32_MAX, 0, 1, -1, 2, -2, 3, -3, 1 << 20, -(1 << 20), 12345, -12345],
    ]).astype(np.int64)
    ms = [1 << 30, I32_MAX, 1518500250, 1073741825, 0, I32_MIN, -(1 << 30)]
    for m, s in itertools.product(ms, [-31, -20, -8, -1, 0, 1, 3, 8, 31]):
        got = quant.multiply_by_quantized_multiplier(xs, m, s)
        assert got.dtype == np.int32
        want = [mbqm(int(x), m, s) for x in xs]
        assert got.tolist() == want, (m, s)


def test_mbqm_per_channel_and_saturation() -> None:
    x = RNG.integers(-(1 << 24), 1 << 24, size=(3, 5, 4)).astype(np.int32)
    mult = np.array([1 << 30, I32_MAX, 1431655765, 1610612736], np.int32)
    shift = np.array([-3, 0, 2, -12], np.int32)
    got = quant.multiply_by_quantized_multiplier(x, mult, shift)
    want = [[[mbqm(int(v), int(mult[c]), int(shift[c])) for c, v in enumerate(row)] for row in plane] for plane in x]
    assert got.tolist() == want
    # the single saturating case of SaturatingRoundingDoublingHighMul
    assert quant.multiply_by_quantized_multiplier(np.array([I32_MIN]), I32_MIN, 0).tolist() == [I32_MAX]


def test_mbqm_random_sweep_per_element() -> None:
    """The closed forms used by the vectorised code equal the literal gemmlowp steps for random operands."""
    n = 3000
    x = RNG.integers(I32_MIN, I32_MAX, size=n, endpoint=True)
    x[: n // 2] >>= RNG.integers(0, 31, size=n // 2)  # plenty of small magnitudes too
    m = RNG.integers(I32_MIN, I32_MAX, size=n, endpoint=True)
    s = RNG.integers(-31, 32, size=n)
    got = quant.multiply_by_quantized_multiplier(x, m, s)
    want = [mbqm(int(a), int(b), int(c)) for a, b, c in zip(x, m, s, strict=True)]
    assert got.tolist() == want
    lit = quant.rounding_divide_by_pot(quant.saturating_rounding_doubling_high_mul(x, m), 7)
    assert lit.tolist() == [rdbpot(srdhm(int(a), int(b)), 7) for a, b in zip(x, m, strict=True)]


def test_rounding_divide_by_pot_ties_away_from_zero() -> None:
    x = np.array([3, -3, 5, -5, 6, -6, 7, -7, 1, -1, 0])
    assert quant.rounding_divide_by_pot(x, 1).tolist() == [2, -2, 3, -3, 3, -3, 4, -4, 1, -1, 0]
    assert quant.rounding_divide_by_pot(x, 2).tolist() == [1, -1, 1, -1, 2, -2, 2, -2, 0, 0, 0]


def test_requantize_clamps_and_offsets() -> None:
    acc = np.array([[-100000, -50, 0, 50, 100000]], np.int32)
    rq = Requant(np.array([1 << 30] * 5, np.int32), np.array([0, 0, 0, 0, -10], np.int32), -100, 90, 7)
    got = quant.requantize(acc, rq)
    want = [clamp(i32(mbqm(int(a), 1 << 30, int(s)) + 7), -100, 90) for a, s in zip(acc[0], rq.shift, strict=True)]
    assert got.dtype == np.int8 and got[0].tolist() == want


@pytest.mark.parametrize("zero_point", [100, -100])
def test_requantize_zero_point_add_wraps_like_int32(zero_point: int) -> None:
    """Near the int32 limits, adding the output zero point wraps (an int32 add in TFLite) before the clamp."""
    acc = np.array([I32_MAX, I32_MAX - 50, I32_MIN, I32_MIN + 50, 0], np.int32)
    got = quant.requantize(acc, Requant(I32_MAX, 0, -128, 127, zero_point))
    want = [clamp(i32(mbqm(int(a), I32_MAX, 0) + zero_point), -128, 127) for a in acc]
    assert got.tolist() == want
    assert want[0 if zero_point > 0 else 2] == (-128 if zero_point > 0 else 127)  # a wrapped one


@pytest.mark.parametrize("act_min, zero_point", [(-128, 5), (-128, -128), (3, 3), (-20, -128), (100, -100)])
def test_requantize_folded_equals_tflite(act_min: int, zero_point: int) -> None:
    """The folded output stage (one multiply, add, shift; the negative-tie term skipped under a clamp at or
    above the zero point) against the literal TFLite steps, per channel and per tensor, ties included."""
    n = 4000
    x = RNG.integers(I32_MIN, I32_MAX, size=n, endpoint=True)
    x[: n // 2] >>= RNG.integers(0, 31, size=n // 2)
    x[:8] = [I32_MIN, I32_MAX, 0, 1, -1, -(1 << 20), 1 << 20, I32_MIN + 1]
    m = RNG.integers(1 << 30, I32_MAX, size=n, endpoint=True)
    m[:50] = RNG.integers(I32_MIN + 1, I32_MAX, size=50)  # an unchecked table's values: negative, small, 0
    m[50] = 0
    s = RNG.integers(-31, 0, size=n)
    s[100:400] = RNG.integers(-4, 0, size=300)  # short shifts: ties at every few values of x
    rq = Requant(m, s, act_min, 127, zero_point)
    assert rq.folded is not None and rq.folded.round_negative == (act_min < zero_point)
    want = [clamp(i32(mbqm(int(a), int(b), int(c)) + zero_point), act_min, 127)
            for a, b, c in zip(x, m, s, strict=True)]
    assert quant.requantize(x, rq).tolist() == want
    for i in (0, 120, 2500):  # per tensor
        one = Requant(int(m[i]), int(s[i]), act_min, 127, zero_point)
        assert one.folded is not None
        want = [clamp(i32(mbqm(int(a), int(m[i]), int(s[i])) + zero_point), act_min, 127) for a in x]
        assert quant.requantize(x, one).tolist() == want


def test_requantize_folds_only_right_shifts_within_int64() -> None:
    assert Requant(1 << 30, -31, -128, 127, 0).folded is not None
    assert Requant(1 << 30, 0, -128, 127, 0).folded is None  # no right shift: the zero point add may wrap
    assert Requant(np.array([1 << 30, 1 << 30]), np.array([-3, 2]), -128, 127, 0).folded is None
    assert Requant(np.array([1 << 30, 1 << 30]), np.array([-3, -40]), -128, 127, 0).folded is None
    assert Requant(I32_MIN, -3, -128, 127, 0).folded is None  # the saturating product


def test_check_requant() -> None:
    assert quant.check_requant(1 << 30, -3, -128, 127, 0) is None
    assert quant.check_requant(np.array([0, I32_MAX]), np.array([1, -31]), -5, 5, 3) is None
    assert quant.check_requant(12345, 0, -128, 127, 0) is not None
    assert quant.check_requant(1 << 30, -32, -128, 127, 0) is not None
    assert quant.check_requant(1 << 30, 0, 5, 4, 0) is not None
    assert quant.check_requant(1 << 30, 0, -129, 4, 0) is not None
    assert quant.check_requant(1 << 30, 0, -128, 127, 128) is not None


# ----------------------------------------------------------------------------------------------------------------
# activation


ACTS = [
    Activation(activation.ACT_NONE),
    Activation(activation.ACT_RELU),
    Activation(activation.ACT_RELU6),
    Activation(activation.ACT_CLIP, clip_min=-0.5, clip_max=0.75),
    Activation(activation.ACT_LEAKY_RELU, alpha=0.1),
    Activation(activation.ACT_SIGMOID),
    Activation(activation.ACT_TANH),
]


@needs_ort
@pytest.mark.parametrize("act", ACTS, ids=lambda a: f"fn{a.fn}")
def test_activation_vs_onnx(act: Activation) -> None:
    x = rand((2, 3, 4, 5), 4.0)
    x[0, 0, 0, :3] = [-200.0, 200.0, 0.0]  # exp overflow of the sigmoid must give exactly 0 / 1
    (want,) = run_onnx(act_nodes(act, "x", "y"), {"x": x})
    y = x.copy()
    out = activation.apply(y, act)
    assert out is y
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=2e-7)
    h = x.astype(np.float16)
    hout = activation.apply(h, act)
    assert hout is h
    np.testing.assert_allclose(h.astype(np.float32), want, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------------------------------------------
# CONV

# (src NHWC, (C_out, KH, KW), stride, dilation, pad (t, l, b, r), groups)
CONV_CASES = [
    ((1, 5, 5, 3), (4, 3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    ((2, 7, 6, 4), (6, 3, 2), (2, 1), (1, 2), (0, 1, 2, 0), 2),  # groups, dilation, asymmetric pad
    ((1, 9, 8, 6), (6, 3, 3), (1, 2), (2, 1), (2, 1, 0, 3), 6),  # depthwise
    ((1, 6, 7, 3), (6, 3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 3),  # depthwise with multiplier 2
    ((1, 4, 4, 2), (3, 2, 2), (1, 1), (1, 1), (3, 4, 3, 2), 1),  # padding larger than kernel
    ((1, 9, 11, 2), (3, 2, 2), (4, 5), (1, 1), (0, 0, 0, 0), 1),  # stride > kernel
    ((3, 5, 7, 8), (5, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1),  # 1x1
    ((1, 11, 13, 5), (7, 5, 3), (3, 2), (1, 1), (2, 0, 1, 1), 1),  # odd sizes
    ((1, 1, 1, 4), (2, 1, 1), (3, 3), (1, 1), (2, 2, 2, 2), 2),
]


def _random_conv_cases(count: int) -> list:
    cases = []
    while len(cases) < count:
        g = int(RNG.choice([1, 1, 2, 3]))
        cin, cout = g * int(RNG.integers(1, 4)), g * int(RNG.integers(1, 4))
        kh, kw = (int(v) for v in RNG.integers(1, 4, size=2))
        st = tuple(int(v) for v in RNG.integers(1, 4, size=2))
        dl = tuple(int(v) for v in RNG.integers(1, 3, size=2))
        pd = tuple(int(v) for v in RNG.integers(0, 3, size=4))
        shape = (int(RNG.integers(1, 3)), int(RNG.integers(3, 10)), int(RNG.integers(3, 10)), cin)
        oh, ow = conv.conv_output_hw(shape[1:3], (kh, kw), st, dl, pd)
        if oh >= 1 and ow >= 1:
            cases.append((shape, (cout, kh, kw), st, dl, pd, g))
    return cases


def onnx_conv(x, w, b, stride, dil, pad, groups, act=activation.NO_ACTIVATION):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=list(stride), dilations=list(dil),
                              pads=list(pad), group=groups), *act_nodes(act, "c", "y")]
    oihw = np.ascontiguousarray(w.transpose(0, 3, 1, 2))
    (y,) = run_onnx(nodes, {"x": nchw(x), "w": oihw, "b": b})
    return nhwc(y)


@needs_ort
@pytest.mark.parametrize("case", CONV_CASES + _random_conv_cases(8))
def test_conv_fp32_vs_onnx(case) -> None:
    shape, (cout, kh, kw), stride, dil, pad, groups = case
    x = rand(shape)
    w = rand((cout, kh, kw, shape[3] // groups))
    b = rand((cout,))
    act = Activation(activation.ACT_LEAKY_RELU, alpha=0.2)
    want = onnx_conv(x, w, b, stride, dil, pad, groups, act)
    dst = np.full(want.shape, np.nan, np.float32)
    conv.conv2d(x, w, dst, bias=b, stride=stride, dilation=dil, pad=pad, groups=groups, act=act)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-5)


@needs_ort
@pytest.mark.parametrize("case", CONV_CASES[:5])
def test_conv_gathered_windows_match(case, monkeypatch) -> None:
    """The index-map path (taken when padding would blow up the padded copy) gives the same result."""
    shape, (cout, kh, kw), stride, dil, pad, groups = case
    x, w, b = rand(shape), rand((cout, kh, kw, shape[3] // groups)), rand((cout,))
    want = onnx_conv(x, w, b, stride, dil, pad, groups)
    monkeypatch.setattr(conv, "_PAD_BLOWUP", 0)
    monkeypatch.setattr(conv, "_PAD_SLACK", -1)
    dst = np.zeros(want.shape, np.float32)
    conv.conv2d(x, w, dst, bias=b, stride=stride, dilation=dil, pad=pad, groups=groups)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-5)


def test_conv_huge_padding_stays_small() -> None:
    """Padding far beyond the input must not build a padded copy of the padded size (~170 GB here)."""
    x, w, b = rand((1, 2, 2, 3)), rand((4, 2, 2, 3)), rand((4,))
    pad, stride = (60000, 60000, 60000, 60000), (30000, 30000)
    oh, ow = conv.conv_output_hw((2, 2), (2, 2), stride, (1, 1), pad)
    assert (oh, ow) == (5, 5)
    dst = np.zeros((1, oh, ow, 4), np.float32)
    conv.conv2d(x, w, dst, bias=b, stride=stride, pad=pad)
    # windows start at input rows/cols -60000, -30000, 0, 30000, 60000: only (2, 2) sees the input
    want = np.broadcast_to(b, dst.shape).copy()
    want[0, 2, 2] += np.einsum("hwc,ohwc->o", x[0], w)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-6)


def test_conv_fp16_close_to_fp32() -> None:
    shape, (cout, kh, kw), stride, dil, pad, groups = CONV_CASES[1]
    x, w, b = rand(shape).astype(np.float16), rand((cout, kh, kw, shape[3] // groups)).astype(np.float16), rand(
        (cout,))
    ref = np.zeros(conv_out_shape(shape, (cout, kh, kw), stride, dil, pad), np.float32)
    conv.conv2d(x.astype(np.float32), w.astype(np.float32), ref, bias=b, stride=stride, dilation=dil, pad=pad,
                groups=groups)
    for dst_dtype in (np.float16, np.float32):
        dst = np.zeros(ref.shape, dst_dtype)
        conv.conv2d(x, w, dst, bias=b, stride=stride, dilation=dil, pad=pad, groups=groups)
        np.testing.assert_allclose(dst.astype(np.float32), ref, rtol=1e-3, atol=2e-3)


def test_fp16_rounded_once_on_store() -> None:
    """fp16 is computed in fp32 and rounded once: exactly the fp32 result rounded to fp16."""
    a, b = rand((2, 3, 4, 5)).astype(np.float16), rand((2, 3, 4, 5)).astype(np.float16)
    scale = rand((5,))
    want = np.zeros(a.shape, np.float32)
    sdp.sdp(a.astype(np.float32), b.astype(np.float32), want, op=sdp.SDP_MUL, scale=scale,
            act=Activation(activation.ACT_SIGMOID))
    got = np.zeros(a.shape, np.float16)
    sdp.sdp(a, b, got, op=sdp.SDP_MUL, scale=scale, act=Activation(activation.ACT_SIGMOID))
    np.testing.assert_array_equal(got, want.astype(np.float16))


def conv_out_shape(shape, wshape, stride, dil, pad):
    oh, ow = conv.conv_output_hw(shape[1:3], wshape[1:3], stride, dil, pad)
    return (shape[0], oh, ow, wshape[0])


INT8_CONV_CASES = [
    ((1, 5, 5, 3), (4, 3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    ((2, 6, 5, 4), (6, 2, 3), (2, 1), (1, 2), (0, 2, 1, 0), 2),
    ((1, 4, 4, 2), (3, 2, 2), (3, 3), (1, 1), (3, 4, 3, 2), 1),
    ((1, 5, 6, 3), (3, 3, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1),
]


@pytest.mark.parametrize("case", INT8_CONV_CASES)
@pytest.mark.parametrize("per_channel_rq", [True, False])
def test_conv_int8_vs_tflite(case, per_channel_rq: bool) -> None:
    shape, (cout, kh, kw), stride, dil, pad, groups = case
    x = rand_i8(shape)
    w = rand_i8((cout, kh, kw, shape[3] // groups), -127, 127)
    bias = RNG.integers(-5000, 5000, size=cout).astype(np.int32)
    x_zp, w_zp = int(RNG.integers(-128, 128)), int(RNG.integers(-3, 4))
    rq = random_requant(cout if per_channel_rq else None, -110, 100)
    mult, shift = per_channel(rq, cout)
    want = ref_conv_int8(x, w, bias, stride, dil, pad, groups, x_zp, w_zp, mult, shift, rq.zero_point,
                         rq.act_min, rq.act_max, raw=False)
    dst = np.zeros(want.shape, np.int8)
    conv.conv2d(x, w, dst, bias=bias, stride=stride, dilation=dil, pad=pad, groups=groups, requant=rq,
                src_zero_point=x_zp, weight_zero_point=w_zp)
    np.testing.assert_array_equal(dst, want)
    # raw int32 accumulators + bias
    want_raw = ref_conv_int8(x, w, bias, stride, dil, pad, groups, x_zp, w_zp, mult, shift, 0, 0, 0, raw=True)
    raw = np.zeros(want.shape, np.int32)
    conv.conv2d(x, w, raw, bias=bias, stride=stride, dilation=dil, pad=pad, groups=groups,
                src_zero_point=x_zp, weight_zero_point=w_zp)
    np.testing.assert_array_equal(raw, want_raw)


@pytest.mark.parametrize(("shape", "cout", "k", "stride", "dil", "pad"), [
    ((1, 6, 7, 4), 4, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((2, 7, 5, 3), 6, (3, 2), (2, 1), (1, 2), (2, 0, 1, 1)),  # depth multiplier 2
])
def test_depthwise_int8_vs_tflite(shape, cout, k, stride, dil, pad) -> None:
    x = rand_i8(shape)
    w = rand_i8((cout, *k, 1), -127, 127)
    bias = RNG.integers(-3000, 3000, size=cout).astype(np.int32)
    rq = random_requant(cout)
    mult, shift = per_channel(rq, cout)
    x_zp, w_zp = -128, 2
    want = ref_depthwise_int8(x, w, bias, stride, dil, pad, x_zp, w_zp, mult, shift, rq.zero_point, rq.act_min,
                              rq.act_max)
    dst = np.zeros(want.shape, np.int8)
    conv.conv2d(x, w, dst, bias=bias, stride=stride, dilation=dil, pad=pad, groups=shape[3], requant=rq,
                src_zero_point=x_zp, weight_zero_point=w_zp)
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("block", [1, 37, 1 << 20])
def test_conv_int8_output_stage_in_blocks(monkeypatch, block: int) -> None:
    """The output stage runs block by block (a block never splits the channels): any block size gives
    TFLite's result, and an int32 dst takes the raw accumulators even when a requant is given."""
    monkeypatch.setattr(conv, "_REQUANT_BLOCK", block)
    x = rand_i8((2, 7, 6, 5))
    w = rand_i8((6, 3, 3, 5), -127, 127)
    bias = RNG.integers(-5000, 5000, size=6).astype(np.int32)
    rq = random_requant(6, -110, 100)
    mult, shift = per_channel(rq, 6)
    args = ((1, 1), (1, 1), (1, 1, 1, 1), 1, 3, 0)
    want = ref_conv_int8(x, w, bias, *args, mult, shift, rq.zero_point, rq.act_min, rq.act_max, raw=False)
    dst = np.zeros(want.shape, np.int8)
    conv.conv2d(x, w, dst, bias=bias, pad=(1, 1, 1, 1), requant=rq, src_zero_point=3)
    np.testing.assert_array_equal(dst, want)
    raw = np.zeros(want.shape, np.int32)
    conv.conv2d(x, w, raw, bias=bias, pad=(1, 1, 1, 1), requant=rq, src_zero_point=3)
    np.testing.assert_array_equal(raw, ref_conv_int8(x, w, bias, *args, mult, shift, 0, 0, 0, raw=True))


def test_conv_int8_large_k_exact() -> None:
    """K * 255 * 127 above 2^24: the matmul runs in exact fp32 blocks of K; equal to int64 arithmetic."""
    x = rand_i8((1, 4, 4, 320))
    x.flat[0] = 127
    w = rand_i8((8, 3, 3, 320), -127, 127)
    w.flat[0] = -127
    x_zp = -128
    assert conv._exact_k_block(x, x_zp, w, 0) == ((1 << 24) - 1) // (255 * 127) < 3 * 3 * 320
    raw = np.zeros((1, 2, 2, 8), np.int32)
    conv.conv2d(x, w, raw, src_zero_point=x_zp)
    xw = np.lib.stride_tricks.sliding_window_view(x.astype(np.int64) - x_zp, (3, 3), axis=(1, 2))
    want = np.einsum("nhwcij,oijc->nhwo", xw, w.astype(np.int64))
    np.testing.assert_array_equal(raw, want)
    rq = random_requant(8)
    dst = np.zeros((1, 2, 2, 8), np.int8)
    conv.conv2d(x, w, dst, requant=rq, src_zero_point=x_zp)
    m, s = per_channel(rq, 8)
    ref = [[clamp(i32(mbqm(int(v), int(m[c]), int(s[c])) + rq.zero_point), -128, 127) for c, v in enumerate(px)]
           for px in want.reshape(-1, 8)]
    np.testing.assert_array_equal(dst.reshape(-1, 8), ref)


def test_conv_int8_saturating_requant() -> None:
    """Large multipliers push results past the act range; wide positive shifts wrap as int32."""
    x = rand_i8((1, 3, 3, 2))
    w = rand_i8((3, 2, 2, 2), -127, 127)
    rq = Requant(np.array([I32_MAX, 1 << 30, 1518500250], np.int32), np.array([12, 20, -31], np.int32), -128, 127,
                 -3)
    mult, shift = per_channel(rq, 3)
    want = ref_conv_int8(x, w, None, (1, 1), (1, 1), (0, 0, 0, 0), 1, 5, 0, mult, shift, -3, -128, 127, raw=False)
    dst = np.zeros(want.shape, np.int8)
    conv.conv2d(x, w, dst, requant=rq, src_zero_point=5)
    np.testing.assert_array_equal(dst, want)
    assert {-128, 127} & set(dst.ravel().tolist())


# ----------------------------------------------------------------------------------------------------------------
# GEMM


@needs_ort
@pytest.mark.parametrize(("a_shape", "b_shape", "transpose_b"), [
    ((1, 1, 5, 7), (1, 1, 7, 3), False),
    ((2, 3, 4, 6), (2, 3, 6, 5), False),
    ((2, 3, 4, 6), (1, 3, 6, 5), False),  # broadcast b batch 0
    ((2, 3, 4, 6), (1, 1, 5, 6), True),
    ((1, 2, 1, 9), (1, 2, 9, 1), False),
])
def test_gemm_fp32_vs_onnx(a_shape, b_shape, transpose_b) -> None:
    a, b = rand(a_shape), rand(b_shape)
    n = b_shape[2] if transpose_b else b_shape[3]
    bias = rand((n,))
    bm = np.ascontiguousarray(b.swapaxes(2, 3)) if transpose_b else b
    act = Activation(activation.ACT_RELU)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Add", ["m", "bias"], ["s"]),
             *act_nodes(act, "s", "y")]
    (want,) = run_onnx(nodes, {"a": a, "b": bm, "bias": bias})
    dst = np.zeros(want.shape, np.float32)
    conv.gemm(a, b, dst, bias=bias, transpose_b=transpose_b, act=act)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-5)


@needs_ort
def test_gemm_vs_onnx_gemm_transb() -> None:
    a, b, c = rand((6, 10)), rand((4, 10)), rand((4,))
    (want,) = run_onnx([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)], {"a": a, "b": b, "c": c})
    dst = np.zeros((1, 1, 6, 4), np.float32)
    conv.gemm(a[None, None], b[None, None], dst, bias=c, transpose_b=True)
    np.testing.assert_allclose(dst[0, 0], want, rtol=1e-5, atol=1e-5)
    h = np.zeros((1, 1, 6, 4), np.float16)
    conv.gemm(a[None, None].astype(np.float16), b[None, None].astype(np.float16), h, bias=c, transpose_b=True)
    np.testing.assert_allclose(h[0, 0].astype(np.float32), want, rtol=2e-3, atol=1e-2)


def test_gemm_int8_vs_tflite_fully_connected() -> None:
    x = rand_i8((5, 37))
    filt = rand_i8((6, 37), -127, 127)
    bias = RNG.integers(-2000, 2000, size=6).astype(np.int32)
    rq = random_requant(None, -120, 120)
    want = ref_fully_connected_int8(x, filt, bias, 9, 0, int(rq.multiplier), int(rq.shift), rq.zero_point,
                                    rq.act_min, rq.act_max)
    dst = np.zeros((1, 1, 5, 6), np.int8)
    conv.gemm(x[None, None], filt[None, None], dst, bias=bias, transpose_b=True, requant=rq, a_zero_point=9)
    np.testing.assert_array_equal(dst[0, 0], want)
    # batched, b not transposed and broadcast over batch 0, with a b zero point, raw int32 out
    a = rand_i8((2, 3, 4, 11))
    b = rand_i8((1, 3, 11, 5))
    raw = np.zeros((2, 3, 4, 5), np.int32)
    conv.gemm(a, b, raw, a_zero_point=-7, b_zero_point=2)
    want_raw = np.matmul(a.astype(np.int64) + 7, b.astype(np.int64) - 2)
    np.testing.assert_array_equal(raw, want_raw)
    # long K with near-extreme operands (sums ~2^28, far past fp32's exact integers): exact fp32 blocks summed
    # in fp64
    a, b = rand_i8((1, 2, 3, 1500), 120, 127), rand_i8((1, 1, 1500, 4), -128, -120)
    a.flat[0], b.flat[0] = -128, 127
    raw = np.zeros((1, 2, 3, 4), np.int32)
    conv.gemm(a, b, raw, a_zero_point=-100, b_zero_point=3)
    assert conv._exact_k_block(a, -100, b, 3) < 1500
    want_raw = np.matmul(a.astype(np.int64) + 100, b.astype(np.int64) - 3)
    assert np.abs(want_raw).min() > 1 << 25
    np.testing.assert_array_equal(raw, want_raw)


# ----------------------------------------------------------------------------------------------------------------
# PDP


POOL_CASES = [
    ((1, 6, 6, 3), (2, 2), (2, 2), (0, 0, 0, 0)),
    ((2, 7, 5, 4), (3, 3), (2, 1), (1, 1, 1, 1)),
    ((1, 8, 9, 2), (3, 2), (1, 3), (2, 1, 0, 1)),  # asymmetric padding
    ((1, 5, 5, 3), (5, 5), (1, 1), (0, 0, 0, 0)),  # global
    ((1, 9, 7, 2), (2, 3), (4, 4), (1, 2, 1, 0)),  # stride > kernel
]


@needs_ort
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize(("op", "count_pad"), [(pdp.PDP_MAX, False), (pdp.PDP_AVG, False), (pdp.PDP_AVG, True)])
def test_pool_fp32_vs_onnx(case, op, count_pad) -> None:
    shape, kernel, stride, pad = case
    x = rand(shape)
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": list(pad)}
    if op == pdp.PDP_AVG:
        node = helper.make_node("AveragePool", ["x"], ["y"], count_include_pad=int(count_pad), **attrs)
    else:
        node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    (want,) = run_onnx([node], {"x": nchw(x)})
    want = nhwc(want)
    dst = np.zeros(want.shape, np.float32)
    pdp.pool2d(x, dst, op=op, kernel=kernel, stride=stride, pad=pad, count_pad=count_pad)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-6)
    h = np.zeros(want.shape, np.float16)
    pdp.pool2d(x.astype(np.float16), h, op=op, kernel=kernel, stride=stride, pad=pad, count_pad=count_pad)
    np.testing.assert_allclose(h.astype(np.float32), want, rtol=2e-3, atol=2e-3)


@needs_ort
@pytest.mark.parametrize("op_name", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool_vs_onnx(op_name: str) -> None:
    x = rand((2, 13, 11, 6))
    (want,) = run_onnx([helper.make_node(op_name, ["x"], ["y"])], {"x": nchw(x)})
    dst = np.zeros((2, 1, 1, 6), np.float32)
    op = pdp.PDP_AVG if op_name == "GlobalAveragePool" else pdp.PDP_MAX
    pdp.pool2d(x, dst, op=op, kernel=(13, 11), stride=(1, 1))
    np.testing.assert_allclose(dst, nhwc(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize(("op", "count_pad"), [(pdp.PDP_MAX, False), (pdp.PDP_AVG, False), (pdp.PDP_AVG, True)])
def test_pool_int8_vs_tflite(case, op, count_pad) -> None:
    shape, kernel, stride, pad = case
    x = rand_i8(shape)
    x.flat[:4] = [-128, 127, -128, -128]
    zp = -5
    want = ref_pool_int8(x, op, kernel, stride, pad, count_pad, zp)
    dst = np.zeros(want.shape, np.int8)
    pdp.pool2d(x, dst, op=op, kernel=kernel, stride=stride, pad=pad, count_pad=count_pad, zero_point=zp)
    np.testing.assert_array_equal(dst, want)


def test_pool_int8_avg_rounds_half_away_from_zero() -> None:
    x = np.array([-3, -2, 3, 2, -1, -2, 1, 2], np.int8).reshape(1, 1, 8, 1)
    dst = np.zeros((1, 1, 4, 1), np.int8)
    pdp.pool2d(x, dst, op=pdp.PDP_AVG, kernel=(1, 2), stride=(1, 2))
    assert dst.ravel().tolist() == [-3, 3, -2, 2]  # -2.5 -> -3, 2.5 -> 3, -1.5 -> -2, 1.5 -> 2


# ----------------------------------------------------------------------------------------------------------------
# CDP


@needs_ort
@pytest.mark.parametrize(("size", "c", "beta"), [(1, 4, 0.75), (3, 7, 0.75), (5, 5, 0.75), (7, 6, 0.75), (9, 3, 0.75),
                                                 (41, 50, 0.75), (5, 16, 0.5), (5, 16, 1.0), (5, 16, 0.6)])
def test_lrn_vs_onnx(size: int, c: int, beta: float) -> None:
    x = rand((2, 3, 4, c), 2.0)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=1e-3 * size, beta=beta, bias=1.5)
    (want,) = run_onnx([node], {"x": nchw(x)})
    dst = np.zeros(x.shape, np.float32)
    cdp.lrn(x, dst, size=size, alpha=1e-3 * size, beta=beta, bias=1.5)
    np.testing.assert_allclose(dst, nhwc(want), rtol=1e-5, atol=1e-6)
    cdp.lrn(x, x, size=size, alpha=1e-3 * size, beta=beta, bias=1.5)  # in place
    np.testing.assert_array_equal(x, dst)


@needs_ort
def test_softmax_vs_onnx() -> None:
    x = rand((2, 3, 4, 10), 5.0)
    x[0, 0, 0] += 1000.0  # stability
    (want,) = run_onnx([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {"x": x})
    dst = np.zeros(x.shape, np.float32)
    cdp.softmax(x, dst)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-7)
    inplace = x.copy()
    cdp.softmax(inplace, inplace)
    np.testing.assert_allclose(inplace, want, rtol=1e-5, atol=1e-7)
    x16 = x.astype(np.float16)
    (want16,) = run_onnx([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {"x": x16.astype(np.float32)})
    h = np.zeros(x.shape, np.float16)
    cdp.softmax(x16, h)
    np.testing.assert_allclose(h.astype(np.float32), want16, rtol=2e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# SDP

SDP_ONNX = {sdp.SDP_ADD: "Add", sdp.SDP_SUB: "Sub", sdp.SDP_MUL: "Mul", sdp.SDP_MAX: "Max", sdp.SDP_MIN: "Min"}


@needs_ort
@pytest.mark.parametrize("op", list(SDP_ONNX))
@pytest.mark.parametrize("src2_shape", [(1, 1, 1, 5), (2, 3, 4, 5), (2, 1, 1, 5), (1, 3, 4, 1)])
def test_sdp_float_vs_onnx(op: int, src2_shape) -> None:
    x, x2 = rand((2, 3, 4, 5)), rand(src2_shape)
    scale, bias = rand((5,)), rand((5,))
    act = Activation(activation.ACT_CLIP, clip_min=-1.0, clip_max=1.5)
    nodes = [helper.make_node("Mul", ["x", "scale"], ["s"]), helper.make_node("Add", ["s", "bias"], ["t"]),
             helper.make_node(SDP_ONNX[op], ["t", "x2"], ["u"]), *act_nodes(act, "u", "y")]
    (want,) = run_onnx(nodes, {"x": x, "scale": scale, "bias": bias, "x2": x2})
    dst = np.zeros(x.shape, np.float32)
    sdp.sdp(x, x2, dst, op=op, scale=scale, bias=bias, act=act)
    np.testing.assert_allclose(dst, want, rtol=1e-6, atol=1e-6)
    # 0-stride view instead of size-1 dims; fp16 operands and dst
    x2b = np.broadcast_to(x2, x.shape)
    h = np.zeros(x.shape, np.float16)
    sdp.sdp(x.astype(np.float16), x2b.astype(np.float16), h, op=op, scale=scale, bias=bias, act=act)
    np.testing.assert_allclose(h.astype(np.float32), want, rtol=3e-3, atol=3e-3)


def test_sdp_float_none_and_in_place() -> None:
    x = rand((2, 3, 4, 5))
    scale = rand((5,))
    want = np.tanh(x * scale)
    y = x.copy()
    sdp.sdp(y, None, y, scale=scale, act=Activation(activation.ACT_TANH))
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    # residual add in place into the second operand, with scale/bias that must not clobber it first
    a, r = rand((2, 3, 4, 5)), rand((2, 3, 4, 5))
    bias = rand((5,))
    want = a * scale + bias + r
    sdp.sdp(a, r, r, op=sdp.SDP_ADD, scale=scale, bias=bias)
    np.testing.assert_allclose(r, want, rtol=1e-6, atol=1e-6)


@needs_ort
@pytest.mark.parametrize("dst_type", [np.float32, np.float16])
def test_sdp_dequantise_vs_onnx(dst_type) -> None:
    """int8 -> float is ONNX's DequantizeLinear exactly: (x - zero point) * scale in fp32."""
    x = rand_i8((2, 3, 4, 5))
    x.flat[:2] = [-128, 127]
    scale, zp = np.float32(0.0371), np.int8(-9)
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])]
    (want,) = run_onnx(nodes, {"x": x, "s": np.array(scale), "z": np.array(zp)})
    dst = np.zeros(x.shape, dst_type)
    sdp.sdp(x, None, dst, scale=np.full(5, scale), src_zero_point=int(zp))
    np.testing.assert_array_equal(dst, want.astype(dst_type))
    # per channel, then a bias and an activation of the float pipeline; the source read in place of a view
    scales, bias = rand((5,)), rand((5,))
    dst = np.zeros(x.shape, np.float32)
    sdp.sdp(strided_copy(x), None, dst, scale=scales, bias=bias, src_zero_point=3, act=Activation(activation.ACT_RELU))
    np.testing.assert_allclose(dst, np.maximum((x.astype(np.float32) - 3) * scales + bias, 0), rtol=1e-6, atol=1e-6)


@needs_ort
def test_sdp_quantise_vs_onnx() -> None:
    """float -> int8 multiplies by the reciprocal scale it is given and rounds half to even; ONNX's
    QuantizeLinear divides, which differs at most by one step, only next to a tie."""
    x = rand((2, 3, 4, 50), scale=3.0)
    scale, zp = np.float32(0.02), np.int8(5)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])]
    (want,) = run_onnx(nodes, {"x": x, "s": np.array(scale), "z": np.array(zp)}, out_type=TensorProto.INT8)
    dst = np.zeros(x.shape, np.int8)
    sdp.sdp(x, None, dst, scale=np.full(50, 1 / scale, np.float32), requant=Requant(0, 0, -128, 127, int(zp)))
    assert np.abs(dst.astype(int) - want).max() <= 1 and (dst == want).mean() > 0.999
    exact = np.clip(np.rint(x * np.float32(1 / scale)) + 5, -128, 127)
    np.testing.assert_array_equal(dst, exact)


def test_sdp_quantise_rounding_clamp_and_specials() -> None:
    """Ties round to even; the clamp is requant's [act_min, act_max] (a fused ReLU here), NaN goes to act_min."""
    x = np.array([0.125, 0.375, -0.125, -0.375, 100.0, -100.0, np.inf, -np.inf, np.nan, 1.0], np.float32)
    src = x.reshape(1, 1, 10, 1)
    want = np.array([0, 2, 0, -2, 127, -128, 127, -128, -128, 4], np.int8).reshape(src.shape)
    dst = np.zeros(src.shape, np.int8)
    sdp.sdp(src, None, dst, scale=np.array([4.0], np.float32), requant=Requant(0, 0, -128, 127, 0))
    np.testing.assert_array_equal(dst, want)
    sdp.sdp(src.astype(np.float16), None, dst, scale=np.array([4.0], np.float32), bias=np.array([1.0], np.float32),
            requant=Requant(0, 0, -3, 100, -3))
    np.testing.assert_array_equal(dst.ravel(), [-1, -1, -3, -3, 100, -3, 100, -3, -3, 2])


@pytest.fixture(params=["element-wise", "table"])
def sdp_int8_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs an int8 SDP test on both paths: the int64 arithmetic and the byte-indexed result table."""
    monkeypatch.setattr(sdp, "TABLE_MIN_ELEMENTS", 0 if request.param == "table" else 1 << 62)
    return request.param


@pytest.mark.parametrize("sub", [False, True])
@pytest.mark.parametrize("left_shift", [20, 0, 24])  # 24: (x + offset) << 24 overflows int32 and wraps
def test_sdp_int8_add_sub_vs_tflite(sub: bool, left_shift: int, sdp_int8_path: str) -> None:
    a = rand_i8((2, 3, 4, 5))
    b = rand_i8((1, 1, 1, 5))
    a.flat[:3], b.flat[:2] = [-128, 127, 0], [-128, 127]
    # TFLite's PrepareGeneralSubOp / Add: twice the larger input scale, left shift 20
    s1, s2, so = 0.05, 0.11, (0.13 if left_shift else 0.5)  # output rescale below 1, as TFLite requires
    twice_max = 2 * max(s1, s2)
    m1, sh1 = quant.quantize_multiplier(s1 / twice_max)
    m2, sh2 = quant.quantize_multiplier(s2 / twice_max)
    mo, sho = quant.quantize_multiplier(twice_max / ((1 << left_shift) * so))
    rq = Requant(mo, sho, -100, 110, 4)
    bb = np.broadcast_to(b, a.shape)
    want = ref_add_sub_int8(a, bb, sub, 3, -7, m1, sh1, m2, sh2, left_shift, mo, sho, 4, -100, 110)
    dst = np.zeros(a.shape, np.int8)
    sdp.sdp(a, b, dst, op=sdp.SDP_SUB if sub else sdp.SDP_ADD, src_zero_point=3, src2_zero_point=-7,
            src_multiplier=m1, src_shift=sh1, src2_multiplier=m2, src2_shift=sh2, left_shift=left_shift,
            requant=rq)
    np.testing.assert_array_equal(dst, want)


def test_sdp_int8_mul_max_min_none(sdp_int8_path: str) -> None:
    a, b = rand_i8((2, 3, 4, 5)), rand_i8((2, 3, 4, 5))
    mo, sho = quant.quantize_multiplier(0.02 * 0.03 / 0.01)
    rq = Requant(mo, sho, -128, 127, -9)
    dst = np.zeros(a.shape, np.int8)
    sdp.sdp(a, b, dst, op=sdp.SDP_MUL, src_zero_point=1, src2_zero_point=-2, requant=rq)
    np.testing.assert_array_equal(dst, ref_mul_int8(a, b, 1, -2, mo, sho, -9, -128, 127))
    rq = Requant(0, 0, -50, 60, 0)
    sdp.sdp(a, b, dst, op=sdp.SDP_MAX, requant=rq)
    np.testing.assert_array_equal(dst, np.clip(np.maximum(a, b), -50, 60))
    sdp.sdp(a, b[:1, :1, :1], dst, op=sdp.SDP_MIN, requant=rq)
    np.testing.assert_array_equal(dst, np.clip(np.minimum(a, b[:1, :1, :1]), -50, 60))
    # NONE: requantise (x - zp_in) per channel
    rq = random_requant(5, -120, 120)
    sdp.sdp(a, None, dst, requant=rq, src_zero_point=6)
    m, s = per_channel(rq, 5)
    want = [[clamp(i32(mbqm(int(v) - 6, int(m[c]), int(s[c])) + rq.zero_point), -120, 120)
             for c, v in enumerate(px)] for px in a.reshape(-1, 5)]
    np.testing.assert_array_equal(dst.reshape(-1, 5), want)
    # NONE with a per-tensor requant (the table path's case)
    rq = Requant(*quant.quantize_multiplier(0.7), -128, 127, -3)
    sdp.sdp(a, None, dst, requant=rq, src_zero_point=6)
    want = [clamp(i32(mbqm(int(v) - 6, rq.multiplier, rq.shift) + rq.zero_point), -128, 127) for v in a.ravel()]
    np.testing.assert_array_equal(dst.ravel(), want)


@pytest.mark.parametrize("op", [sdp.SDP_ADD, sdp.SDP_SUB, sdp.SDP_MUL, sdp.SDP_NONE])
def test_sdp_int8_table_equals_element_wise_for_every_byte(op: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """All 65,536 operand pairs, src2 broadcast along rows, into a strided dst and in place: the gather
    gives what the int64 arithmetic gives."""
    every = np.arange(256, dtype=np.uint8).view(np.int8)
    a = np.ascontiguousarray(np.broadcast_to(every[:, None], (256, 256))).reshape(1, 1, 256, 256)
    b = every.reshape(1, 1, 1, 256)
    m1, s1 = quant.quantize_multiplier(0.3)
    m2, s2 = quant.quantize_multiplier(0.45)
    out_scale = {sdp.SDP_ADD: 0.9 * 2.0**-20, sdp.SDP_SUB: 0.9 * 2.0**-20, sdp.SDP_MUL: 0.004, sdp.SDP_NONE: 0.7}[op]
    params = dict(op=op, src_zero_point=3, src2_zero_point=-7, src_multiplier=m1, src_shift=s1, src2_multiplier=m2,
                  src2_shift=s2, left_shift=20, requant=Requant(*quant.quantize_multiplier(out_scale), -120, 125, 4))
    src2 = None if op == sdp.SDP_NONE else b
    monkeypatch.setattr(sdp, "TABLE_MIN_ELEMENTS", 1 << 62)
    want = np.zeros(a.shape, np.int8)
    sdp.sdp(a, src2, want, **params)
    monkeypatch.setattr(sdp, "TABLE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(sdp, "_GATHER_BLOCK", 1000)
    wide = np.zeros((1, 1, 256, 512), np.int8)
    sdp.sdp(a, src2, wide[..., ::2], **params)
    np.testing.assert_array_equal(wide[..., ::2], want)
    in_place = a.copy()
    sdp.sdp(in_place, src2, in_place, **params)
    np.testing.assert_array_equal(in_place, want)
    assert len(np.unique(want)) > 100  # the parameters spread the results: the test would see a wrong index


# ----------------------------------------------------------------------------------------------------------------
# BDMA / RUBIK


def test_bdma_copy_and_fill() -> None:
    x = rand((2, 3, 4, 5))
    buf, dst = guarded((2, 3, 4, 5), np.float16, 7.0)
    bdma.copy(x, dst)
    np.testing.assert_array_equal(dst, x.astype(np.float16))
    assert guard_untouched(buf, dst, 7.0)
    back = np.zeros(x.shape, np.float32)
    bdma.copy(dst, back)
    np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError):
        bdma.copy(x, np.zeros(x.shape, np.int32))
    nan = np.array([0x7FC01234], np.uint32).view(np.float32)
    out = np.zeros(1, np.float32)
    bdma.copy(nan, out)
    assert out.view(np.uint32)[0] == 0x7FC01234
    bufi, di = guarded((3, 2, 2, 4), np.int8, 9)
    bdma.fill(di, 0xABCDEF80)
    assert (di == -128).all() and guard_untouched(bufi, di, 9)
    h = np.zeros((2, 2), np.float16)
    bdma.fill(h, 0xFFFF3C00)
    assert (h == 1.0).all()
    f = np.zeros((2, 2), np.float32)
    bdma.fill(f, 0x3FC00000)
    assert (f == 1.5).all()
    i = np.zeros(3, np.int32)
    bdma.fill(i, 0xFFFFFFFE)
    assert (i == -2).all()


@needs_ort
def test_rubik_vs_onnx() -> None:
    x = rand((2, 3, 4, 5))
    for perm in [(0, 3, 1, 2), (3, 2, 1, 0), (1, 0, 3, 2), (0, 1, 2, 3)]:
        (want,) = run_onnx([helper.make_node("Transpose", ["x"], ["y"], perm=list(perm))], {"x": x})
        buf, dst = guarded(want.shape, np.float32, -1.0)
        rubik.transpose(x, dst, perm)
        np.testing.assert_array_equal(dst, want)
        assert guard_untouched(buf, dst, -1.0)
    shape = np.array([4, 1, 6, 5], np.int64)
    (want,) = run_onnx([helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": x, "s": shape})
    src = np.asfortranarray(x)  # non-contiguous source
    buf, dst = guarded((4, 1, 6, 5), np.float32, -1.0)
    rubik.reshape(src, dst)
    np.testing.assert_array_equal(dst, want)
    assert guard_untouched(buf, dst, -1.0)
    c = np.zeros((4, 1, 6, 5), np.float32)
    rubik.reshape(x.transpose(0, 2, 1, 3), c)
    np.testing.assert_array_equal(c, x.transpose(0, 2, 1, 3).reshape(4, 1, 6, 5))


# ----------------------------------------------------------------------------------------------------------------
# strided / broadcast views, writes confined to dst


def strided_copy(a: np.ndarray) -> np.ndarray:
    """The same values as a, through a non-contiguous view (every other element of a bigger array)."""
    big = np.zeros(tuple(2 * d for d in a.shape), a.dtype)
    v = big[tuple(slice(None, None, 2) for _ in a.shape)]
    v[...] = a
    return v


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[6]])
@pytest.mark.parametrize("dtype", [np.float32, np.int8])
def test_conv_views_and_guard(case, dtype) -> None:
    shape, (cout, kh, kw), stride, dil, pad, groups = case
    if dtype == np.int8:
        x, w = rand_i8(shape), rand_i8((cout, kh, kw, shape[3] // groups))
        rq = random_requant(cout)
        kwargs = {"requant": rq, "src_zero_point": 3}
        fill = 77
    else:
        x, w = rand(shape), rand((cout, kh, kw, shape[3] // groups))
        kwargs, fill = {"act": Activation(activation.ACT_RELU)}, -9.0
    out_shape = conv_out_shape(shape, (cout, kh, kw), stride, dil, pad)
    want = np.zeros(out_shape, dtype)
    conv.conv2d(x, w, want, stride=stride, dilation=dil, pad=pad, groups=groups, **kwargs)
    buf, dst = guarded(out_shape, dtype, fill)
    conv.conv2d(strided_copy(x), strided_copy(w), dst, stride=stride, dilation=dil, pad=pad, groups=groups,
                **kwargs)
    np.testing.assert_allclose(dst, want, rtol=1e-6, atol=1e-6 if dtype == np.float32 else 0)
    assert guard_untouched(buf, dst, fill)
    # a source broadcast along W (0 stride) equals its materialised copy
    xb = np.lib.stride_tricks.as_strided(x[:, :, :1], shape=x.shape, strides=(*x.strides[:2], 0, x.strides[3]))
    want_b = np.zeros(out_shape, dtype)
    conv.conv2d(np.ascontiguousarray(xb), w, want_b, stride=stride, dilation=dil, pad=pad, groups=groups, **kwargs)
    got_b = np.zeros(out_shape, dtype)
    conv.conv2d(xb, w, got_b, stride=stride, dilation=dil, pad=pad, groups=groups, **kwargs)
    np.testing.assert_array_equal(got_b, want_b)


def test_gemm_views_and_guard() -> None:
    a, b, bias = rand((2, 3, 4, 6)), rand((1, 3, 6, 5)), rand((5,))
    want = np.matmul(a, b) + bias
    buf, dst = guarded((2, 3, 4, 5), np.float32, 3.0)
    b0 = np.lib.stride_tricks.as_strided(b, shape=(2, 3, 6, 5), strides=(0, *b.strides[1:]))
    conv.gemm(strided_copy(a), b0, dst, bias=bias)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-5)
    assert guard_untouched(buf, dst, 3.0)
    bufi, di = guarded((2, 3, 4, 5), np.int32, 3)
    ai, bi = rand_i8((2, 3, 4, 6)), rand_i8((1, 3, 5, 6))
    conv.gemm(strided_copy(ai), strided_copy(bi), di, transpose_b=True)
    np.testing.assert_array_equal(di, np.matmul(ai.astype(np.int64), bi.astype(np.int64).swapaxes(2, 3)))
    assert guard_untouched(bufi, di, 3)


def test_sdp_pool_cdp_views_and_guard() -> None:
    x = rand((2, 5, 6, 4))
    row = rand((1, 1, 1, 4))
    x2 = np.lib.stride_tricks.as_strided(row, shape=x.shape, strides=(0, 0, 0, 4))
    buf, dst = guarded(x.shape, np.float32, 5.0)
    sdp.sdp(strided_copy(x), x2, dst, op=sdp.SDP_MUL)
    np.testing.assert_allclose(dst, x * row, rtol=1e-6)
    assert guard_untouched(buf, dst, 5.0)
    xi = rand_i8(x.shape)
    bufi, di = guarded(x.shape, np.int8, 5)
    rq = random_requant(4)
    sdp.sdp(strided_copy(xi), None, di, requant=rq)
    want = np.zeros(x.shape, np.int8)
    sdp.sdp(xi, None, want, requant=rq)
    np.testing.assert_array_equal(di, want)
    assert guard_untouched(bufi, di, 5)
    for op in (pdp.PDP_MAX, pdp.PDP_AVG):
        want = np.zeros((2, 3, 3, 4), np.float32)
        pdp.pool2d(x, want, op=op, kernel=(3, 2), stride=(2, 2), pad=(1, 0, 1, 0))
        buf, dst = guarded((2, 3, 3, 4), np.float32, 5.0)
        pdp.pool2d(strided_copy(x), dst, op=op, kernel=(3, 2), stride=(2, 2), pad=(1, 0, 1, 0))
        np.testing.assert_allclose(dst, want, rtol=1e-6)
        assert guard_untouched(buf, dst, 5.0)
    for fn in (cdp.softmax, lambda s, d: cdp.lrn(s, d, size=3, alpha=0.01, beta=0.5, bias=1.0)):
        want = np.zeros(x.shape, np.float32)
        fn(x, want)
        buf, dst = guarded(x.shape, np.float32, 5.0)
        fn(strided_copy(x), dst)
        np.testing.assert_allclose(dst, want, rtol=1e-6)
        assert guard_untouched(buf, dst, 5.0)


def test_block_slices_cover_once() -> None:
    for shape, elems in [((2, 3, 4, 5), 1 << 20), ((2, 3, 4, 5), 20), ((2, 3, 4, 5), 7), ((3, 1, 1, 9), 2)]:
        seen = np.zeros(shape, int)
        for idx in block_slices(shape, elems):
            seen[idx] += 1
        assert (seen == 1).all()


def _epilogue_views() -> list[np.ndarray]:
    """Views an epilogue writes: whole tensors, channel slices of a concat buffer, strided rows and columns,
    axes of length one, a reversed last axis, and a tensor wider than one row of the constant."""
    base = RNG.standard_normal((2, 5, 7, 24)).astype(np.float32)
    base[0, 0, 0, :3] = [np.nan, -np.inf, np.inf]
    return [base.copy(), base[:, :, :, 4:12], base[:, ::2], base[:, :, 1:2], base[:, :, :, ::-1],
            base[:1, :1, :1, :1], RNG.standard_normal((3, 130, 129)).astype(np.float32)]


@pytest.mark.parametrize("ufunc", [np.maximum, np.minimum, np.fmax, np.add])
def test_apply_constant_is_the_plain_ufunc(ufunc) -> None:
    for view in _epilogue_views():
        expected = ufunc(view, np.float32(0.25))
        apply_constant(ufunc, view, 0.25)
        np.testing.assert_array_equal(view, expected)


@pytest.mark.parametrize("ufunc", [np.add, np.multiply])
def test_apply_channels_is_the_plain_ufunc(ufunc) -> None:
    for view in _epilogue_views():
        for vector in (RNG.standard_normal(view.shape[-1]).astype(np.float32), np.float32([3.0])):
            expected = ufunc(view, vector)
            apply_channels(ufunc, view, vector)
            np.testing.assert_array_equal(view, expected)
    with pytest.raises(ValueError):  # a vector that fits no axis is refused, not tiled into a wrong row
        apply_channels(np.add, np.zeros((2, 4), np.float32), np.ones(2, np.float32))


def test_unit_runs_are_views() -> None:
    for view in _epilogue_views():
        runs = unit_runs(view)
        if runs is not None:
            assert np.shares_memory(runs, view) and runs.size == view.size
            assert runs.shape[-1] == 1 or runs.strides[-1] == runs.itemsize
    assert unit_runs(np.zeros((4, 6), np.float32)[:, ::2]) is None


def test_chunked_paths_match(monkeypatch) -> None:
    """Tiny chunk budgets (many blocks, partial rows) give the same results as one block."""
    x, w, b = rand((2, 6, 7, 4)), rand((5, 3, 3, 4)), rand((5,))
    full = np.zeros((2, 6, 7, 5), np.float32)
    conv.conv2d(x, w, full, bias=b, pad=(1, 1, 1, 1))
    xd, wd = rand((2, 6, 7, 4)), rand((4, 3, 3, 1))
    full_dw = np.zeros((2, 6, 7, 4), np.float32)
    conv.conv2d(xd, wd, full_dw, pad=(1, 1, 1, 1), groups=4)
    a, bm = rand((2, 1, 9, 6)), rand((1, 1, 6, 3))
    full_mm = np.zeros((2, 1, 9, 3), np.float32)
    conv.gemm(a, bm, full_mm)
    xi = rand_i8((2, 3, 4, 5))
    rq = random_requant(5)
    full_sdp = np.zeros(xi.shape, np.int8)
    sdp.sdp(xi, None, full_sdp, requant=rq)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 200)
    monkeypatch.setattr(conv, "_DEPTHWISE_CHUNK", 12)
    monkeypatch.setattr(sdp, "CHUNK_BYTES", 64 * 7)
    got = np.zeros_like(full)
    conv.conv2d(x, w, got, bias=b, pad=(1, 1, 1, 1))
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)  # BLAS may sum in another order
    got_dw = np.zeros_like(full_dw)
    conv.conv2d(xd, wd, got_dw, pad=(1, 1, 1, 1), groups=4)
    np.testing.assert_allclose(got_dw, full_dw, rtol=1e-6, atol=1e-6)
    got_mm = np.zeros_like(full_mm)
    conv.gemm(a, bm, got_mm)
    np.testing.assert_allclose(got_mm, full_mm, rtol=1e-5, atol=1e-5)
    got_sdp = np.zeros_like(full_sdp)
    sdp.sdp(xi, None, got_sdp, requant=rq)
    np.testing.assert_array_equal(got_sdp, full_sdp)


# ----------------------------------------------------------------------------------------------------------------
# submit-time checkers


def test_check_conv() -> None:
    ok = dict(src_dims=(1, 8, 8, 4), weight_dims=(6, 3, 3, 2), dst_dims=(1, 8, 8, 6), src_dtype=FP32,
              weight_dtype=FP32, dst_dtype=FP16, stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1), groups=2,
              act_fn=activation.ACT_SIGMOID, has_requant=False)
    assert conv.check_conv(**ok) is None
    assert conv.check_conv(**{**ok, "src_dtype": INT8, "weight_dtype": INT8, "dst_dtype": INT8,
                              "act_fn": 0, "has_requant": True}) is None
    assert conv.check_conv(**{**ok, "src_dtype": INT8, "weight_dtype": INT8, "dst_dtype": INT32,
                              "act_fn": 0}) is None
    bad = [
        {"dst_dims": (1, 7, 8, 6)},
        {"groups": 3},
        {"weight_dims": (6, 3, 3, 4)},
        {"stride": (0, 1)},
        {"dilation": (1, 0)},
        {"weight_dtype": FP16},
        {"dst_dtype": INT8},
        {"has_requant": True},
        {"act_fn": 9},
        {"src_dims": (1, 8, 8, 0)},
        {"src_dims": (1, 70000, 8, 4)},
        {"pad": (0, 0, 0, 0), "weight_dims": (6, 9, 9, 2)},
        {"src_dtype": INT8, "weight_dtype": INT8, "dst_dtype": INT8, "act_fn": 0, "has_requant": False},
        {"src_dtype": INT8, "weight_dtype": INT8, "dst_dtype": INT8, "act_fn": activation.ACT_SIGMOID,
         "has_requant": True},
        {"src_dtype": INT8, "weight_dtype": INT8, "dst_dtype": FP32, "act_fn": 0},
        {"src_dtype": INT32, "weight_dtype": INT32, "dst_dtype": INT32, "act_fn": 0},
    ]
    for change in bad:
        assert isinstance(conv.check_conv(**{**ok, **change}), str), change


def test_check_gemm() -> None:
    ok = dict(a_dims=(2, 3, 4, 6), b_dims=(1, 3, 6, 5), dst_dims=(2, 3, 4, 5), a_dtype=FP16, b_dtype=FP16,
              dst_dtype=FP32, transpose_b=False, act_fn=activation.ACT_RELU, has_requant=False)
    assert conv.check_gemm(**ok) is None
    assert conv.check_gemm(**{**ok, "b_dims": (2, 1, 5, 6), "transpose_b": True}) is None
    for change in [{"b_dims": (2, 2, 6, 5)}, {"b_dims": (1, 3, 7, 5)}, {"dst_dims": (2, 3, 4, 6)},
                   {"transpose_b": True}, {"b_dtype": FP32}, {"dst_dtype": INT8},
                   {"a_dtype": INT8, "b_dtype": INT8, "dst_dtype": INT8, "act_fn": 0},
                   {"a_dtype": INT8, "b_dtype": INT8, "dst_dtype": INT32, "act_fn": 0, "has_requant": True}]:
        assert isinstance(conv.check_gemm(**{**ok, **change}), str), change


def test_check_sdp() -> None:
    ok = dict(op=sdp.SDP_ADD, src_dims=(2, 3, 4, 5), src2_dims=(1, 1, 1, 5), dst_dims=(2, 3, 4, 5), src_dtype=FP32,
              src2_dtype=FP16, dst_dtype=FP16, act_fn=activation.ACT_TANH, has_requant=False, has_scale=True)
    assert sdp.check_sdp(**ok) is None
    assert sdp.check_sdp(**{**ok, "op": sdp.SDP_NONE, "src2_dims": None, "src2_dtype": None}) is None
    i8 = {"src_dtype": INT8, "src2_dtype": INT8, "dst_dtype": INT8, "act_fn": 0, "has_requant": True,
          "has_scale": False, "left_shift": 20}
    assert sdp.check_sdp(**{**ok, **i8}) is None
    for change in [{"src2_dims": (1, 2, 1, 5)}, {"dst_dims": (2, 3, 4, 6)}, {"op": 6}, {"src2_dims": None},
                   {"op": sdp.SDP_NONE}, {"dst_dtype": INT8}, {"has_requant": True}, {**i8, "has_scale": True},
                   {**i8, "has_requant": False}, {**i8, "act_fn": activation.ACT_RELU}, {**i8, "left_shift": 32},
                   {**i8, "src2_dtype": FP32}, {"src_dtype": INT32}]:
        assert isinstance(sdp.check_sdp(**{**ok, **change}), str), change
    # op NONE between int8 and float converts, with or without scale and bias
    none = {**ok, "op": sdp.SDP_NONE, "src2_dims": None, "src2_dtype": None}
    dequantise = {**none, "src_dtype": INT8, "dst_dtype": FP32, "act_fn": activation.ACT_SIGMOID}
    quantise = {**none, "src_dtype": FP16, "dst_dtype": INT8, "act_fn": 0, "has_requant": True, "has_scale": True}
    assert sdp.check_sdp(**dequantise) is None and sdp.check_sdp(**quantise) is None
    for change in [{**dequantise, "dst_dtype": INT32}, {**quantise, "src_dtype": INT32},
                   {**quantise, "act_fn": activation.ACT_RELU}, {**dequantise, "op": sdp.SDP_ADD}]:
        assert isinstance(sdp.check_sdp(**change), str), change


def test_check_pool() -> None:
    ok = dict(op=pdp.PDP_AVG, src_dims=(1, 7, 5, 4), dst_dims=(1, 4, 5, 4), src_dtype=INT8, dst_dtype=INT8,
              kernel=(3, 3), stride=(2, 1), pad=(1, 1, 1, 1))
    assert pdp.check_pool(**ok) is None
    for change in [{"pad": (3, 1, 1, 1)}, {"pad": (1, 3, 1, 1)}, {"dst_dims": (1, 4, 5, 3)}, {"kernel": (0, 3)},
                   {"stride": (1, 0)}, {"op": 2}, {"dst_dtype": FP32}, {"src_dtype": INT32, "dst_dtype": INT32},
                   {"kernel": (9, 9), "pad": (0, 0, 0, 0)}]:
        assert isinstance(pdp.check_pool(**{**ok, **change}), str), change


def test_check_cdp_bdma_rubik() -> None:
    assert cdp.check_cdp(cdp.CDP_LRN, (1, 2, 3, 4), (1, 2, 3, 4), FP32, FP16, 5) is None
    assert cdp.check_cdp(cdp.CDP_SOFTMAX, (1, 2, 3, 4), (1, 2, 3, 4), FP16, FP16, 0) is None
    assert cdp.check_cdp(cdp.CDP_LRN, (1, 2, 3, 4), (1, 2, 3, 4), FP32, FP32, 4) is not None
    assert cdp.check_cdp(cdp.CDP_SOFTMAX, (1, 2, 3, 4), (1, 2, 3, 4), INT8, INT8, 0) is not None
    assert cdp.check_cdp(cdp.CDP_SOFTMAX, (1, 2, 3, 4), (1, 2, 3, 5), FP32, FP32, 0) is not None
    assert cdp.check_cdp(cdp.CDP_SOFTMAX, (1, 2, 3, 4), (1, 2, 3, 4), FP32, FP32, 3) is not None
    assert bdma.check_bdma(bdma.BDMA_COPY, (1, 2, 3, 4), (1, 2, 3, 4), FP32, FP16) is None
    assert bdma.check_bdma(bdma.BDMA_COPY, (1, 2, 3, 4), (1, 2, 3, 4), INT32, INT32) is None
    assert bdma.check_bdma(bdma.BDMA_FILL, None, (1, 2, 3, 4), None, INT8) is None
    assert bdma.check_bdma(bdma.BDMA_COPY, (1, 2, 3, 4), (1, 2, 4, 3), FP32, FP32) is not None
    assert bdma.check_bdma(bdma.BDMA_COPY, (1, 2, 3, 4), (1, 2, 3, 4), INT8, INT32) is not None
    assert bdma.check_bdma(2, (1, 2, 3, 4), (1, 2, 3, 4), FP32, FP32) is not None
    assert rubik.check_rubik(rubik.RUBIK_TRANSPOSE, (1, 2, 3, 4), (4, 1, 3, 2), FP16, FP16, (3, 0, 2, 1)) is None
    assert rubik.check_rubik(rubik.RUBIK_RESHAPE, (1, 2, 3, 4), (6, 4, 1, 1), INT8, INT8, (0, 0, 0, 0)) is None
    assert rubik.check_rubik(rubik.RUBIK_TRANSPOSE, (1, 2, 3, 4), (4, 1, 3, 2), FP16, FP16, (3, 0, 2, 2)) is not None
    assert rubik.check_rubik(rubik.RUBIK_TRANSPOSE, (1, 2, 3, 4), (1, 2, 3, 4), FP16, FP16, (3, 0, 2, 1)) is not None
    assert rubik.check_rubik(rubik.RUBIK_RESHAPE, (1, 2, 3, 4), (6, 4, 1, 2), INT8, INT8, None) is not None
    assert rubik.check_rubik(rubik.RUBIK_RESHAPE, (1, 2, 3, 4), (6, 4, 1, 1), INT8, INT32, None) is not None
