"""Every compute packet and dtype run through a mounted device with libaccel, against references.

Each case builds its operands in BOs (often at an offset inside the BO and with strides that leave
gaps, to prove the device honours both), submits one job, waits for its out-fence and reads the
result back through the BO's CPU mapping. Every byte of a BO that holds a dst is preset to a
sentinel, and everything outside the dst's elements must still hold it afterwards.

References: fp32 against onnxruntime (tiny single-op graphs; NHWC <-> NCHW and OHWI <-> OIHW are
converted here) or numpy where ONNX has no exact counterpart; fp16 against the same fp32 reference
within fp16 tolerance; int8 bit for bit against the numpy kernels of emudev.engine.ops called directly
on the same data (their own unit tests hold them to TFLite's reference kernels) and, as a sanity check
independent of them, within one quantum of exact integer / float arithmetic done here.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from emudev.engine.ops import conv, pdp, sdp
from emudev.engine.ops.quant import Requant, quantize_multiplier
from emudev.uapi import defs
from userspace.libaccel import READ, WRITE, Bo, CommandStream, Context, Device, Tensor, abs_timeout, upload_stream
from userspace.libaccel import activation as make_act

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:  # pragma: no cover - the int8 cases need neither
    ort = None

needs_ort = pytest.mark.skipif(ort is None, reason="onnx / onnxruntime not installed")

F32, F16, I8, I32 = np.float32, np.float16, np.int8, np.int32
SENTINEL = 0xA5
TIMEOUT_S = 20.0

NONE, RELU, RELU6, CLIP, LEAKY, SIGMOID, TANH = (
    defs.DRM_EMUDEV_ACT_NONE, defs.DRM_EMUDEV_ACT_RELU, defs.DRM_EMUDEV_ACT_RELU6, defs.DRM_EMUDEV_ACT_CLIP,
    defs.DRM_EMUDEV_ACT_LEAKY_RELU, defs.DRM_EMUDEV_ACT_SIGMOID, defs.DRM_EMUDEV_ACT_TANH)
ACTS = {"none": make_act(NONE), "relu": make_act(RELU), "relu6": make_act(RELU6),
        "clip": make_act(CLIP, clip_min=-0.75, clip_max=0.5), "leaky": make_act(LEAKY, alpha=0.125),
        "sigmoid": make_act(SIGMOID), "tanh": make_act(TANH)}
SDP_OPS = {"add": defs.DRM_EMUDEV_SDP_ADD, "sub": defs.DRM_EMUDEV_SDP_SUB, "mul": defs.DRM_EMUDEV_SDP_MUL,
           "max": defs.DRM_EMUDEV_SDP_MAX, "min": defs.DRM_EMUDEV_SDP_MIN}
CONV_E, SDP_E, PDP_E, BDMA_E, RUBIK_E, CS_E = (
    defs.DRM_EMUDEV_ENGINE_CONV, defs.DRM_EMUDEV_ENGINE_SDP, defs.DRM_EMUDEV_ENGINE_PDP,
    defs.DRM_EMUDEV_ENGINE_BDMA, defs.DRM_EMUDEV_ENGINE_RUBIK, defs.DRM_EMUDEV_ENGINE_CS)


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from the case's name: fixed data, different for every case."""
    return np.random.default_rng([ord(ch) for ch in repr(key)])


# -- device memory ------------------------------------------------------------------------------------


def packed(dims: Sequence[int], dtype: np.typing.DTypeLike) -> tuple[int, int, int, int]:
    return window(dims, dtype, (0, 0, 0, 0))


def window(dims: Sequence[int], dtype: np.typing.DTypeLike, gap: Sequence[int]) -> tuple[int, int, int, int]:
    """Byte strides of `dims` as a window of a bigger row-major tensor of dims + gap: rows with holes."""
    strides, step = [], np.dtype(dtype).itemsize
    for dim, extra in zip(reversed(dims), reversed(gap), strict=True):
        strides.insert(0, step)
        step *= dim + extra
    return tuple(strides)  # type: ignore[return-value]


def channel_major(dims: Sequence[int], dtype: np.typing.DTypeLike) -> tuple[int, int, int, int]:
    """Strides of an NHWC view of memory laid out NCHW: no dim is contiguous but W."""
    _, h, w, c = dims
    item = np.dtype(dtype).itemsize
    return (c * h * w * item, w * item, item, h * w * item)


def span(dims: Sequence[int], strides: Sequence[int], itemsize: int) -> int:
    return sum((d - 1) * s for d, s in zip(dims, strides, strict=True)) + itemsize


@dataclass
class Placed:
    """A tensor in a BO of its own, at `offset` with byte `strides`; `before` is the BO as placed."""

    bo: Bo
    offset: int
    dims: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]
    dtype: np.dtype
    zero_point: int
    before: np.ndarray

    @property
    def t(self) -> Tensor:
        return Tensor.of(self.bo, self.dims, self.dtype, self.offset, self.strides, self.zero_point)

    @property
    def va(self) -> int:
        return self.bo.device_va + self.offset

    def view(self, buffer: np.ndarray) -> np.ndarray:
        return np.ndarray(self.dims, self.dtype, buffer=buffer, offset=self.offset, strides=self.strides)

    def read(self) -> np.ndarray:
        """The tensor's elements; asserts that no byte of the BO outside them changed."""
        with self.bo.cpu_access(write=False) as memory:
            after = memory.copy()
        expected = self.before.copy()
        self.view(expected)[...] = self.view(after)
        changed = np.flatnonzero(expected != after)
        assert changed.size == 0, (f"{changed.size} bytes outside the tensor changed, the first at BO offset "
                                   f"{changed[0]} (tensor at {self.offset}, dims {self.dims}, strides {self.strides})")
        return self.view(after).copy()


class Npu:
    """One test's BOs, its context, and job submission."""

    def __init__(self, dev: Device, ctx: Context) -> None:
        self.dev, self.ctx = dev, ctx
        self.bos: list[Bo] = []

    def close(self) -> None:
        for bo in self.bos:
            bo.close()

    def place(self, data: np.ndarray | None, dims: Sequence[int] | None = None, dtype: np.typing.DTypeLike = None,
              *, offset: int = 0, strides: Sequence[int] | None = None, zero_point: int = 0,
              slack: int = 40) -> Placed:
        """A new BO, every byte SENTINEL, with `data` (if any) written at `offset` through `strides`."""
        if data is not None:
            dtype = data.dtype if dtype is None else dtype
            dims = data.shape
        assert dims is not None and dtype is not None
        dims4 = (1,) * (4 - len(dims)) + tuple(int(d) for d in dims)
        dtype = np.dtype(dtype)
        strides4 = tuple(strides) if strides is not None else packed(dims4, dtype)
        assert offset % dtype.itemsize == 0
        bo = self.dev.create_bo(offset + span(dims4, strides4, dtype.itemsize) + slack)
        self.bos.append(bo)
        placed = Placed(bo, offset, dims4, strides4, dtype, zero_point, np.empty(0, np.uint8))  # type: ignore
        with bo.cpu_access() as memory:
            memory[:] = SENTINEL
            if data is not None:
                placed.view(memory)[...] = data.reshape(dims4)
            placed.before = memory.copy()
        return placed

    def empty(self, dims: Sequence[int], dtype: np.typing.DTypeLike, **kwargs: object) -> Placed:
        return self.place(None, dims, dtype, **kwargs)  # type: ignore[arg-type]

    def table(self, values: np.ndarray, offset: int = 24) -> int:
        """A per-channel table (biases, scales, requantisation pairs) in device memory: its address."""
        return self.place(np.ascontiguousarray(values).reshape(-1), offset=offset).va

    def run(self, stream: CommandStream) -> None:
        """Submit with every BO of the test, wait for the out-fence, and insist the job ended well."""
        cmd, size = upload_stream(self.dev, stream)
        done = self.dev.create_syncobj()
        try:
            job = self.ctx.submit(cmd, size, bos=[(bo, READ | WRITE) for bo in self.bos], signal=[(done, 0)])
            done.wait(timeout_ns=abs_timeout(TIMEOUT_S))
            status = job.status()
            assert status.done and status.error == 0 and not status.faulted, status
        finally:
            done.destroy()
            cmd.close()


@pytest.fixture(scope="module")
def dev(emudev_shared_mount) -> Iterator[Device]:
    with Device(emudev_shared_mount.node(0)) as d:
        yield d


@pytest.fixture
def npu(dev: Device) -> Iterator[Npu]:
    with Context(dev) as ctx:
        n = Npu(dev, ctx)
        try:
            yield n
        finally:
            n.close()


# -- references -------------------------------------------------------------------------------------


def run_onnx(nodes: list, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run a graph whose inputs are all graph inputs (fp32) and whose output is "y"."""
    g_in = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()]
    g_out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph(nodes, "case", g_in, g_out),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {k: np.ascontiguousarray(v, dtype=F32) for k, v in inputs.items()}
    return session.run(["y"], feeds)[0]


def act_nodes(act: defs.drm_emudev_activation, src: str, inputs: dict[str, np.ndarray]) -> list:
    """Nodes computing the activation of `src` into "y" (the clip bounds become graph inputs)."""
    fn = act.fn
    if fn == NONE:
        return [helper.make_node("Identity", [src], ["y"])]
    if fn in (RELU6, CLIP):
        inputs["lo"] = np.array(0.0 if fn == RELU6 else act.clip_min, F32)
        inputs["hi"] = np.array(6.0 if fn == RELU6 else act.clip_max, F32)
        return [helper.make_node("Clip", [src, "lo", "hi"], ["y"])]
    if fn == LEAKY:
        return [helper.make_node("LeakyRelu", [src], ["y"], alpha=act.alpha)]
    return [helper.make_node({RELU: "Relu", SIGMOID: "Sigmoid", TANH: "Tanh"}[fn], [src], ["y"])]


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def assert_close(got: np.ndarray, want: np.ndarray, dtype: np.typing.DTypeLike) -> None:
    """fp32: a few ulps of the result's magnitude; fp16: the device computes in fp32 and rounds once."""
    tol = 2e-3 if np.dtype(dtype) == F16 else 2e-5
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol * scale)


def float_data(rng: np.random.Generator, shape: Sequence[int], dtype: np.typing.DTypeLike) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def int8_data(rng: np.random.Generator, shape: Sequence[int], low: int = -128) -> np.ndarray:
    return rng.integers(low, 128, size=shape, dtype=np.int64).astype(I8)


def conv_int64(x: np.ndarray, w: np.ndarray, zx: int, zw: int, stride: Sequence[int], dilation: Sequence[int],
               pad: Sequence[int], groups: int) -> np.ndarray:
    """Exact sum of (x - zx)(w - zw) per output, in int64 with plain numpy: independent of the ops."""
    n, h, wd, cin = x.shape
    cout, kh, kw, cig = w.shape
    xp = np.zeros((n, h + pad[0] + pad[2], wd + pad[1] + pad[3], cin), np.int64)
    xp[:, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x.astype(np.int64) - zx
    oh, ow = conv.conv_output_hw((h, wd), (kh, kw), stride, dilation, pad)
    wi = w.astype(np.int64) - zw
    out = np.zeros((n, oh, ow, cout), np.int64)
    cog = cout // groups
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            tap = xp[:, y0:y0 + (oh - 1) * stride[0] + 1:stride[0], x0:x0 + (ow - 1) * stride[1] + 1:stride[1]]
            for g in range(groups):
                out[..., g * cog:(g + 1) * cog] += tap[..., g * cig:(g + 1) * cig] @ wi[g * cog:(g + 1) * cog, i, j].T
    return out


def requant_float(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, zero_point: int, lo: int,
                  hi: int) -> np.ndarray:
    """Requantisation in float64 (round half away from zero): within one quantum of TFLite's fixed point."""
    real = acc * (multiplier.astype(np.float64) * np.exp2(shift.astype(np.float64) - 31))
    return np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5) + zero_point, lo, hi)


def assert_within_one(got: np.ndarray, want: np.ndarray) -> None:
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1, f"{np.count_nonzero(diff > 1)} outputs more than one quantum from float arithmetic"


def multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(reals)]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


# -- CONV -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvCase:
    n: int
    h: int
    w: int
    cin: int
    cout: int
    k: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    bias: bool = True
    act: str = "none"

    def out_dims(self) -> tuple[int, int, int, int]:
        oh, ow = conv.conv_output_hw((self.h, self.w), self.k, self.stride, self.dilation, self.pad)
        return (self.n, oh, ow, self.cout)

    def weight_dims(self) -> tuple[int, int, int, int]:
        return (self.cout, *self.k, self.cin // self.groups)

    def fields(self) -> dict[str, object]:
        return dict(stride=self.stride, dilation=self.dilation, pad=self.pad, groups=self.groups)


CONV_CASES = {
    "3x3-same-bias-relu": ConvCase(1, 9, 9, 8, 16, (3, 3), pad=(1, 1, 1, 1), act="relu"),
    "odd-stride-asym-pad": ConvCase(2, 11, 7, 5, 6, (3, 2), stride=(2, 3), pad=(0, 1, 2, 0), bias=False),
    "pad-beyond-kernel": ConvCase(1, 5, 6, 3, 4, (2, 3), pad=(4, 5, 3, 6), act="relu6"),
    "huge-pad-stride5": ConvCase(1, 6, 6, 2, 3, (3, 3), stride=(5, 5), pad=(40, 41, 39, 40), act="clip"),
    "dilation": ConvCase(1, 13, 12, 4, 5, (3, 3), dilation=(2, 3), pad=(2, 3, 1, 0), act="leaky"),
    "groups-3": ConvCase(2, 8, 9, 6, 9, (3, 3), pad=(1, 1, 1, 1), groups=3, act="sigmoid"),
    "depthwise": ConvCase(1, 10, 10, 8, 8, (3, 3), pad=(1, 1, 1, 1), groups=8, act="relu6"),
    "depthwise-x2-stride2": ConvCase(1, 11, 10, 4, 8, (5, 5), stride=(2, 2), pad=(2, 2, 2, 2), groups=4,
                                     act="tanh"),
    "1x1": ConvCase(2, 7, 5, 16, 7, (1, 1)),
    "1x1-stride2": ConvCase(1, 9, 9, 6, 10, (1, 1), stride=(2, 2), bias=False, act="relu"),
    "7x7-stride2": ConvCase(1, 17, 15, 3, 8, (7, 7), stride=(2, 2), pad=(3, 3, 3, 3), act="leaky"),
}
LAYOUTS = ("packed", "strided")


def conv_layout(npu: Npu, layout: str, x: np.ndarray, w: np.ndarray, out_dims: Sequence[int],
                dst_dtype: np.typing.DTypeLike, zx: int = 0, zw: int = 0, zy: int = 0) -> tuple[Placed, ...]:
    """src, weight and dst: packed at offset 0, or windows with gaps at odd offsets (dst a channel slice)."""
    if layout == "packed":
        return (npu.place(x, zero_point=zx), npu.place(w, zero_point=zw),
                npu.empty(out_dims, dst_dtype, zero_point=zy))
    if layout == "channel-major":
        return (npu.place(x, offset=32, strides=channel_major(x.shape, x.dtype), zero_point=zx),
                npu.place(w, offset=8, zero_point=zw),
                npu.empty(out_dims, dst_dtype, offset=16, strides=channel_major(out_dims, dst_dtype), zero_point=zy))
    item = np.dtype(dst_dtype).itemsize
    return (npu.place(x, offset=4 * 37, strides=window(x.shape, x.dtype, (1, 2, 1, 3)), zero_point=zx),
            npu.place(w, offset=4 * 13, strides=window(w.shape, w.dtype, (0, 1, 0, 2)), zero_point=zw),
            npu.empty(out_dims, dst_dtype, offset=3 * item + 4096, strides=window(out_dims, dst_dtype, (1, 0, 2, 5)),
                      zero_point=zy))


def conv_reference(case: ConvCase, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    inputs = {"x": nchw(x.astype(F32)), "w": np.ascontiguousarray(w.astype(F32).transpose(0, 3, 1, 2))}
    names = ["x", "w"]
    if bias is not None:
        inputs["b"] = bias
        names.append("b")
    node = helper.make_node("Conv", names, ["c"], kernel_shape=list(case.k), strides=list(case.stride),
                            dilations=list(case.dilation), pads=list(case.pad), group=case.groups)
    return nhwc(run_onnx([node, *act_nodes(ACTS[case.act], "c", inputs)], inputs))


@needs_ort
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_fp32(npu: Npu, name: str, layout: str) -> None:
    case = CONV_CASES[name]
    rng = rng_for("conv", name, layout)
    x = float_data(rng, (case.n, case.h, case.w, case.cin), F32)
    w = float_data(rng, case.weight_dims(), F32)
    bias = float_data(rng, (case.cout,), F32) if case.bias else None
    src, weight, dst = conv_layout(npu, layout, x, w, case.out_dims(), F32)
    bias_va = npu.table(bias) if bias is not None else 0
    npu.run(CommandStream().packet("CONV", src=src.t, weight=weight.t, dst=dst.t, bias_va=bias_va,
                                   act=ACTS[case.act], **case.fields()))
    assert_close(dst.read(), conv_reference(case, x, w, bias), F32)


@needs_ort
@pytest.mark.parametrize(("name", "dst_dtype", "layout"), [
    ("3x3-same-bias-relu", F16, "packed"), ("depthwise", F16, "strided"), ("groups-3", F16, "channel-major"),
    ("dilation", F32, "strided"), ("odd-stride-asym-pad", F32, "channel-major")])
def test_conv_fp16(npu: Npu, name: str, dst_dtype: type, layout: str) -> None:
    """fp16 operands, fp16 or fp32 dst: computed in fp32, rounded once."""
    case = CONV_CASES[name]
    rng = rng_for("conv16", name)
    x = float_data(rng, (case.n, case.h, case.w, case.cin), F16)
    w = float_data(rng, case.weight_dims(), F16)
    bias = float_data(rng, (case.cout,), F32) if case.bias else None
    src, weight, dst = conv_layout(npu, layout, x, w, case.out_dims(), dst_dtype)
    bias_va = npu.table(bias) if bias is not None else 0
    npu.run(CommandStream().packet("CONV", src=src.t, weight=weight.t, dst=dst.t, bias_va=bias_va,
                                   act=ACTS[case.act], **case.fields()))
    got = dst.read()
    assert got.dtype == dst_dtype
    assert_close(got, conv_reference(case, x, w, bias), dst_dtype)


@needs_ort
@pytest.mark.parametrize("layout", ["packed", "channel-major"])
def test_conv_fp32_channel_major_src(npu: Npu, layout: str) -> None:
    """A src whose channels are far apart in memory (NCHW memory seen as NHWC)."""
    case = ConvCase(1, 12, 10, 6, 6, (3, 3), pad=(1, 0, 1, 2), act="relu")
    rng = rng_for("cm", layout)
    x = float_data(rng, (case.n, case.h, case.w, case.cin), F32)
    w = float_data(rng, case.weight_dims(), F32)
    src, weight, dst = conv_layout(npu, layout, x, w, case.out_dims(), F32)
    npu.run(CommandStream().packet("CONV", src=src.t, weight=weight.t, dst=dst.t, act=ACTS[case.act],
                                   **case.fields()))
    assert_close(dst.read(), conv_reference(case, x, w, None), F32)


@dataclass(frozen=True)
class Int8Conv:
    case: ConvCase
    per_channel: bool = False
    raw: bool = False  # int32 dst: the accumulators plus bias
    zx: int = 0
    zw: int = 0
    zy: int = 0
    clamp: tuple[int, int] = (-128, 127)
    layout: str = "packed"


INT8_CONV_CASES = {
    "per-tensor": Int8Conv(ConvCase(1, 9, 8, 8, 12, (3, 3), pad=(1, 1, 1, 1)), zx=-3, zy=5),
    "per-tensor-weight-zp-stride2": Int8Conv(ConvCase(2, 10, 11, 5, 7, (3, 3), stride=(2, 2), pad=(0, 1, 2, 0)),
                                             zx=17, zw=2, zy=-9, layout="strided"),
    "per-channel-table": Int8Conv(ConvCase(1, 8, 8, 16, 10, (3, 3), pad=(1, 1, 1, 1), dilation=(1, 2)),
                                  per_channel=True, zx=-128, zy=-1, clamp=(-1, 127), layout="strided"),
    "per-channel-depthwise": Int8Conv(ConvCase(1, 10, 9, 8, 8, (3, 3), pad=(1, 1, 1, 1), groups=8),
                                      per_channel=True, zx=4, zy=2, clamp=(2, 100)),
    "per-channel-groups-pad-beyond": Int8Conv(ConvCase(1, 6, 7, 6, 4, (2, 2), pad=(3, 3, 4, 2), groups=2),
                                              per_channel=True, zx=-20, zy=10, layout="channel-major"),
    "per-channel-long-k": Int8Conv(ConvCase(1, 6, 6, 256, 16, (3, 3), pad=(1, 1, 1, 1)), per_channel=True,
                                   zx=-128, zy=0),
    "1x1-per-tensor": Int8Conv(ConvCase(2, 5, 7, 12, 9, (1, 1), bias=False), zx=1, zy=-128),
    "raw-int32": Int8Conv(ConvCase(1, 7, 9, 6, 5, (3, 3), stride=(1, 2), pad=(2, 0, 0, 1)), raw=True, zx=-7,
                          zw=1, layout="strided"),
    "raw-int32-depthwise": Int8Conv(ConvCase(1, 8, 8, 4, 4, (3, 3), pad=(1, 1, 1, 1), groups=4, bias=False),
                                    raw=True, zx=9),
}


@pytest.mark.parametrize("name", INT8_CONV_CASES)
def test_conv_int8(npu: Npu, name: str) -> None:
    spec = INT8_CONV_CASES[name]
    case = spec.case
    rng = rng_for("conv8", name)
    x = int8_data(rng, (case.n, case.h, case.w, case.cin))
    w = int8_data(rng, case.weight_dims(), low=-127)
    bias = rng.integers(-20000, 20000, case.cout).astype(I32) if case.bias else None
    exact = conv_int64(x, w, spec.zx, spec.zw, case.stride, case.dilation, case.pad, case.groups)
    if bias is not None:
        exact += bias
    dst_dtype = I32 if spec.raw else I8
    src, weight, dst = conv_layout(npu, spec.layout, x, w, case.out_dims(), dst_dtype, spec.zx, spec.zw, spec.zy)
    bias_va = npu.table(bias) if bias is not None else 0
    fields = dict(src=src.t, weight=weight.t, dst=dst.t, bias_va=bias_va, **case.fields())
    if spec.raw:
        npu.run(CommandStream().packet("CONV", **fields))
        got = dst.read()
        np.testing.assert_array_equal(got, exact.astype(I32))
        return
    # Scales that spread the outputs over the int8 range, with some saturation at both ends.
    peak = np.maximum(np.abs(exact).max(axis=(0, 1, 2)), 1).astype(np.float64)
    reals = 110.0 / peak * rng.uniform(0.6, 1.4, case.cout) if spec.per_channel else np.array([110.0 / peak.max()])
    mult, shift = multipliers(reals)
    lo, hi = spec.clamp
    if spec.per_channel:
        table = np.stack([mult, shift], axis=1).astype(I32)
        requant = dict(table_va=npu.table(table), act_min=lo, act_max=hi)
    else:
        requant = dict(multiplier=int(mult[0]), shift=int(shift[0]), act_min=lo, act_max=hi)
    npu.run(CommandStream().packet("CONV", requant=requant, **fields))
    got = dst.read()
    want = np.empty(case.out_dims(), I8)
    conv.conv2d(x, w, want, bias=bias, stride=case.stride, dilation=case.dilation, pad=case.pad,
                groups=case.groups, requant=Requant(mult if spec.per_channel else int(mult[0]),
                                                    shift if spec.per_channel else int(shift[0]), lo, hi, spec.zy),
                src_zero_point=spec.zx, weight_zero_point=spec.zw)
    assert got.tobytes() == want.tobytes(), f"{np.count_nonzero(got != want)} of {got.size} int8 outputs differ"
    assert_within_one(got, requant_float(exact, mult, shift, spec.zy, lo, hi))
    assert len(np.unique(got)) > 20  # the case really spreads over the range


# -- GEMM -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmCase:
    batch: tuple[int, int]
    m: int
    k: int
    n: int
    b_batch: tuple[int, int] | None = None  # None: same as a's
    transpose_b: bool = False
    bias: bool = True
    act: str = "none"

    def dims(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        bb = self.b_batch or self.batch
        b = (*bb, self.n, self.k) if self.transpose_b else (*bb, self.k, self.n)
        return (*self.batch, self.m, self.k), b, (*self.batch, self.m, self.n)


GEMM_CASES = {
    "fc-bias-relu": GemmCase((1, 1), 5, 33, 17, act="relu"),
    "batched": GemmCase((2, 3), 7, 12, 9, bias=False, act="tanh"),
    "batched-b-broadcast": GemmCase((3, 2), 4, 10, 6, b_batch=(1, 1), act="leaky"),
    "batched-b-broadcast-dim1": GemmCase((2, 3), 6, 8, 5, b_batch=(2, 1), act="clip"),
    "transpose-b-bias": GemmCase((1, 2), 9, 21, 11, transpose_b=True, act="relu6"),
    "transpose-b-broadcast": GemmCase((2, 2), 3, 16, 4, b_batch=(1, 2), transpose_b=True, act="sigmoid"),
    "matvec": GemmCase((1, 1), 1, 64, 3),
}


def gemm_layout(npu: Npu, layout: str, a: np.ndarray, b: np.ndarray, out_dims: Sequence[int],
                dst_dtype: np.typing.DTypeLike, za: int = 0, zb: int = 0, zy: int = 0) -> tuple[Placed, ...]:
    if layout == "packed":
        return (npu.place(a, zero_point=za), npu.place(b, zero_point=zb),
                npu.empty(out_dims, dst_dtype, zero_point=zy))
    item = np.dtype(dst_dtype).itemsize
    return (npu.place(a, offset=4 * 11, strides=window(a.shape, a.dtype, (0, 1, 0, 3)), zero_point=za),
            # b transposed in memory: column-major rows
            npu.place(b, offset=4 * 5, strides=_column_major(b.shape, b.dtype), zero_point=zb),
            npu.empty(out_dims, dst_dtype, offset=item * 7, strides=window(out_dims, dst_dtype, (1, 0, 2, 1)),
                      zero_point=zy))


def _column_major(dims: Sequence[int], dtype: np.typing.DTypeLike) -> tuple[int, int, int, int]:
    _, b1, r, c = dims
    item = np.dtype(dtype).itemsize
    return (b1 * r * c * item, r * c * item, item, r * item)


def gemm_reference(case: GemmCase, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    inputs = {"a": a.astype(F32), "b": b.astype(F32)}
    nodes = []
    rhs = "b"
    if case.transpose_b:
        nodes.append(helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 1, 3, 2]))
        rhs = "bt"
    nodes.append(helper.make_node("MatMul", ["a", rhs], ["mm"]))
    out = "mm"
    if bias is not None:
        inputs["bias"] = bias
        nodes.append(helper.make_node("Add", ["mm", "bias"], ["mb"]))
        out = "mb"
    return run_onnx(nodes + act_nodes(ACTS[case.act], out, inputs), inputs)


@needs_ort
@pytest.mark.parametrize(("dtype", "layout"), [(F32, "packed"), (F32, "strided"), (F16, "strided")])
@pytest.mark.parametrize("name", GEMM_CASES)
def test_gemm_float(npu: Npu, name: str, dtype: type, layout: str) -> None:
    case = GEMM_CASES[name]
    rng = rng_for("gemm", name, layout, np.dtype(dtype).name)
    a_dims, b_dims, out_dims = case.dims()
    a, b = float_data(rng, a_dims, dtype), float_data(rng, b_dims, dtype)
    bias = float_data(rng, (case.n,), F32) if case.bias else None
    pa, pb, dst = gemm_layout(npu, layout, a, b, out_dims, dtype)
    npu.run(CommandStream().packet("GEMM", a=pa.t, b=pb.t, dst=dst.t, bias_va=npu.table(bias) if case.bias else 0,
                                   flags=defs.DRM_EMUDEV_GEMM_TRANSPOSE_B if case.transpose_b else 0,
                                   act=ACTS[case.act]))
    assert_close(dst.read(), gemm_reference(case, a, b, bias), dtype)


INT8_GEMM_CASES = {
    "per-tensor": (GemmCase((1, 1), 8, 40, 12), False, False, "packed"),
    "per-column-table-transpose-b": (GemmCase((2, 1), 6, 64, 10, b_batch=(1, 1), transpose_b=True), True, False,
                                     "strided"),
    "batched-per-tensor": (GemmCase((2, 3), 5, 24, 7, bias=False), False, False, "strided"),
    "long-k-per-column": (GemmCase((1, 1), 4, 3000, 6), True, False, "packed"),
    "raw-int32": (GemmCase((1, 2), 5, 50, 8, transpose_b=True), False, True, "strided"),
}


@pytest.mark.parametrize("name", INT8_GEMM_CASES)
def test_gemm_int8(npu: Npu, name: str) -> None:
    case, per_column, raw, layout = INT8_GEMM_CASES[name]
    rng = rng_for("gemm8", name)
    a_dims, b_dims, out_dims = case.dims()
    a, b = int8_data(rng, a_dims), int8_data(rng, b_dims, low=-127)
    za, zb, zy = -11, (0 if per_column else 3), (0 if raw else 7)
    bias = rng.integers(-30000, 30000, case.n).astype(I32) if case.bias else None
    bm = b.swapaxes(2, 3) if case.transpose_b else b
    exact = np.matmul(a.astype(np.int64) - za, bm.astype(np.int64) - zb)
    if bias is not None:
        exact += bias
    pa, pb, dst = gemm_layout(npu, layout, a, b, out_dims, I32 if raw else I8, za, zb, zy)
    fields = dict(a=pa.t, b=pb.t, dst=dst.t, bias_va=npu.table(bias) if bias is not None else 0,
                  flags=defs.DRM_EMUDEV_GEMM_TRANSPOSE_B if case.transpose_b else 0)
    if raw:
        npu.run(CommandStream().packet("GEMM", **fields))
        np.testing.assert_array_equal(dst.read(), exact.astype(I32))
        return
    peak = np.maximum(np.abs(exact).max(axis=(0, 1, 2)), 1).astype(np.float64)
    reals = 120.0 / peak * rng.uniform(0.5, 1.5, case.n) if per_column else np.array([120.0 / peak.max()])
    mult, shift = multipliers(reals)
    lo, hi = -128, 127
    if per_column:
        requant = dict(table_va=npu.table(np.stack([mult, shift], axis=1).astype(I32)), act_min=lo, act_max=hi)
        rq = Requant(mult, shift, lo, hi, zy)
    else:
        requant = dict(multiplier=int(mult[0]), shift=int(shift[0]), act_min=lo, act_max=hi)
        rq = Requant(int(mult[0]), int(shift[0]), lo, hi, zy)
    npu.run(CommandStream().packet("GEMM", requant=requant, **fields))
    got = dst.read()
    want = np.empty(out_dims, I8)
    conv.gemm(a, b, want, bias=bias, transpose_b=case.transpose_b, requant=rq, a_zero_point=za, b_zero_point=zb)
    assert got.tobytes() == want.tobytes(), f"{np.count_nonzero(got != want)} of {got.size} int8 outputs differ"
    assert_within_one(got, requant_float(exact, mult, shift, zy, lo, hi))


# -- SDP ------------------------------------------------------------------------------------------------

DIMS = (2, 5, 6, 7)


def broadcast_src2(npu: Npu, kind: str, dtype: np.typing.DTypeLike, rng: np.random.Generator,
                   zero_point: int = 0) -> tuple[Tensor, np.ndarray]:
    """The second operand as the device sees it (a Tensor) and as numpy broadcasts it (for references)."""
    n, _, w, c = DIMS
    item = np.dtype(dtype).itemsize

    def data(shape: Sequence[int]) -> np.ndarray:
        return int8_data(rng, shape) if np.dtype(dtype) == I8 else float_data(rng, shape, dtype)

    if kind == "full":
        v = data(DIMS)
        return npu.place(v, offset=item * 9, strides=window(DIMS, dtype, (0, 1, 1, 2)), zero_point=zero_point).t, v
    if kind == "channel-0-strides":  # dims of dst, strides 0 but along C
        v = data((c,))
        p = npu.place(v, offset=item * 3, zero_point=zero_point)
        return p.t.view(DIMS, (0, 0, 0, item)), np.broadcast_to(v, DIMS)
    if kind == "channel-dims-1":
        v = data((1, 1, 1, c))
        return npu.place(v, offset=item * 5, zero_point=zero_point).t, np.broadcast_to(v, DIMS)
    if kind == "scalar-dims-1":
        v = data((1, 1, 1, 1))
        return npu.place(v, offset=item, zero_point=zero_point).t, np.broadcast_to(v, DIMS)
    if kind == "scalar-0-strides":
        v = data((1,))
        return npu.place(v, offset=item * 2, zero_point=zero_point).t.view(DIMS, (0, 0, 0, 0)), np.broadcast_to(
            v, DIMS)
    if kind == "row-mixed":  # [N, 1, W, C] by dims, W through a 0 stride: one row of C per image
        v = data((n, 1, 1, c))
        p = npu.place(v, offset=item * 4, zero_point=zero_point)
        return p.t.view((n, 1, w, c), (p.strides[0], 0, 0, item)), np.broadcast_to(v, DIMS)
    raise AssertionError(kind)


def sdp_reference(op: str | None, x: np.ndarray, x2: np.ndarray | None, scale: np.ndarray | None,
                  bias: np.ndarray | None, act: str) -> np.ndarray:
    inputs = {"x": x.astype(F32)}
    nodes, cur = [], "x"
    if scale is not None:
        inputs["scale"] = scale
        nodes.append(helper.make_node("Mul", [cur, "scale"], ["s"]))
        cur = "s"
    if bias is not None:
        inputs["bias"] = bias
        nodes.append(helper.make_node("Add", [cur, "bias"], ["sb"]))
        cur = "sb"
    if op is not None:
        assert x2 is not None
        inputs["x2"] = np.ascontiguousarray(x2, dtype=F32)
        onnx_op = {"add": "Add", "sub": "Sub", "mul": "Mul", "max": "Max", "min": "Min"}[op]
        nodes.append(helper.make_node(onnx_op, [cur, "x2"], ["o"]))
        cur = "o"
    return run_onnx(nodes + act_nodes(ACTS[act], cur, inputs), inputs)


@needs_ort
@pytest.mark.parametrize("act", ACTS)
def test_sdp_scale_bias_every_activation(npu: Npu, act: str) -> None:
    """op NONE: folded batch norm (scale and bias per channel) and each activation."""
    rng = rng_for("sdp-sb", act)
    x = float_data(rng, DIMS, F32) * 2
    scale, bias = float_data(rng, (DIMS[3],), F32), float_data(rng, (DIMS[3],), F32)
    src = npu.place(x, offset=4 * 3, strides=window(DIMS, F32, (1, 0, 1, 1)))
    dst = npu.empty(DIMS, F32, offset=4 * 17, strides=window(DIMS, F32, (0, 2, 0, 3)))
    npu.run(CommandStream().packet("SDP", op=defs.DRM_EMUDEV_SDP_NONE, src=src.t, dst=dst.t,
                                   scale_va=npu.table(scale), bias_va=npu.table(bias), act=ACTS[act]))
    assert_close(dst.read(), sdp_reference(None, x, None, scale, bias, act), F32)


SDP_FLOAT_CASES = [
    ("add", "full", "none", F32, True), ("sub", "channel-0-strides", "relu", F32, False),
    ("mul", "channel-dims-1", "leaky", F32, True), ("max", "scalar-dims-1", "none", F32, False),
    ("min", "scalar-0-strides", "relu6", F32, False), ("add", "row-mixed", "tanh", F32, False),
    ("sub", "full", "sigmoid", F32, True), ("mul", "scalar-0-strides", "clip", F32, False),
    ("max", "channel-0-strides", "none", F32, True), ("min", "full", "none", F32, False),
    ("add", "channel-0-strides", "relu", F16, True), ("mul", "full", "sigmoid", F16, False),
    ("max", "row-mixed", "none", F16, False), ("sub", "scalar-dims-1", "tanh", F16, True),
]


@needs_ort
@pytest.mark.parametrize(("op", "src2_kind", "act", "dtype", "scale_bias"), SDP_FLOAT_CASES)
def test_sdp_elementwise_float(npu: Npu, op: str, src2_kind: str, act: str, dtype: type, scale_bias: bool) -> None:
    rng = rng_for("sdp", op, src2_kind, act, np.dtype(dtype).name)
    x = float_data(rng, DIMS, dtype)
    src2, x2 = broadcast_src2(npu, src2_kind, dtype, rng)
    scale = float_data(rng, (DIMS[3],), F32) if scale_bias else None
    bias = float_data(rng, (DIMS[3],), F32) if scale_bias else None
    src = npu.place(x, offset=np.dtype(dtype).itemsize * 11, strides=window(DIMS, dtype, (0, 0, 3, 1)))
    dst = npu.empty(DIMS, dtype, offset=np.dtype(dtype).itemsize, strides=window(DIMS, dtype, (1, 1, 0, 2)))
    npu.run(CommandStream().packet("SDP", op=SDP_OPS[op], src=src.t, src2=src2, dst=dst.t,
                                   scale_va=npu.table(scale) if scale_bias else 0,
                                   bias_va=npu.table(bias) if scale_bias else 0, act=ACTS[act]))
    assert_close(dst.read(), sdp_reference(op, x, x2, scale, bias, act), dtype)


@needs_ort
def test_sdp_in_place_residual_add(npu: Npu) -> None:
    """dst the very same view as src: x = relu(x + y), as a residual connection is written in place."""
    rng = rng_for("sdp-inplace")
    x, y = float_data(rng, DIMS, F32), float_data(rng, DIMS, F32)
    both = npu.place(x, offset=4 * 6, strides=window(DIMS, F32, (0, 1, 0, 1)))
    other = npu.place(y)
    npu.run(CommandStream().packet("SDP", op=defs.DRM_EMUDEV_SDP_ADD, src=both.t, src2=other.t, dst=both.t,
                                   act=ACTS["relu"]))
    assert_close(both.read(), np.maximum(x + y, 0), F32)


def add_params(s1: float, s2: float, so: float) -> tuple[dict[str, int], int, int]:
    """TFLite's quantised ADD parameters (left shift 20): the packet's rescale fields and the output's."""
    twice_max = 2 * max(s1, s2)
    (m1,), (sh1,) = multipliers(np.array([s1 / twice_max]))
    (m2,), (sh2,) = multipliers(np.array([s2 / twice_max]))
    (mo,), (sho,) = multipliers(np.array([twice_max / ((1 << 20) * so)]))
    return (dict(src_multiplier=int(m1), src_shift=int(sh1), src2_multiplier=int(m2), src2_shift=int(sh2),
                 left_shift=20), int(mo), int(sho))


@pytest.mark.parametrize("dtype", [F32, F16])
def test_sdp_converts_between_int8_and_float(npu: Npu, dtype: np.typing.DTypeLike) -> None:
    """int8 -> float -> int8 in one job: dequantise with per-channel scales, then quantise with a fused
    ReLU as the clamp (act_min = the zero point); bit for bit against the kernels in-process."""
    rng = rng_for("sdp-convert", np.dtype(dtype).name)
    x = int8_data(rng, DIMS)
    scales = rng.uniform(0.01, 0.1, DIMS[3]).astype(F32)
    inverse = np.full(DIMS[3], 1 / 0.04, F32)
    item = np.dtype(dtype).itemsize
    src = npu.place(x, offset=3, strides=window(DIMS, I8, (0, 1, 0, 2)), zero_point=-6)
    mid = npu.empty(DIMS, dtype, offset=2 * item, strides=window(DIMS, dtype, (1, 0, 1, 0)))
    dst = npu.empty(DIMS, I8, offset=5, strides=window(DIMS, I8, (0, 0, 1, 3)), zero_point=4)
    stream = CommandStream()
    stream.packet("SDP", op=defs.DRM_EMUDEV_SDP_NONE, src=src.t, dst=mid.t, scale_va=npu.table(scales))
    stream.packet("SDP", op=defs.DRM_EMUDEV_SDP_NONE, src=mid.t, dst=dst.t, scale_va=npu.table(inverse),
                  requant=dict(act_min=4, act_max=127))
    npu.run(stream)
    want_mid = np.empty(DIMS, dtype)
    sdp.sdp(x, None, want_mid, scale=scales, src_zero_point=-6)
    assert mid.read().tobytes() == want_mid.tobytes()
    assert_close(mid.read(), (x.astype(F32) + 6) * scales, dtype)
    want = np.empty(DIMS, I8)
    sdp.sdp(want_mid, None, want, scale=inverse, requant=Requant(0, 0, 4, 127, 4))
    assert dst.read().tobytes() == want.tobytes()
    assert_within_one(dst.read(), np.clip(np.rint((x + 6.0) * scales / 0.04) + 4, 4, 127))


def test_sdp_conversions_outside_the_rules_are_einval(npu: Npu) -> None:
    """A conversion takes its scale from scale_va only, clamps an int8 dst with requant only, and
    converts int8 to and from float types only."""
    f32 = npu.empty(DIMS, F32)
    i8 = npu.empty(DIMS, I8)
    i32 = npu.empty(DIMS, I32)
    none = defs.DRM_EMUDEV_SDP_NONE
    bad = [dict(src=i8.t, dst=f32.t, left_shift=20),
           dict(src=i8.t, dst=f32.t, src_multiplier=1 << 30),
           dict(src=f32.t, dst=i8.t, requant=dict(multiplier=1 << 30, act_min=-128, act_max=127)),
           dict(src=f32.t, dst=i8.t, requant=dict(table_va=npu.table(np.zeros(2 * DIMS[3], I32)), act_min=-128,
                                                  act_max=127)),
           dict(src=f32.t, dst=i8.t, act=ACTS["relu"], requant=dict(act_min=-128, act_max=127)),
           dict(src=f32.t, dst=i8.t, requant=dict(act_min=-129, act_max=127)),
           dict(src=i8.t, dst=i32.t),
           dict(src=i32.t, dst=i8.t, requant=dict(act_min=-128, act_max=127))]
    for fields in bad:
        cmd, size = upload_stream(npu.dev, CommandStream().packet("SDP", op=none, **fields))
        with cmd:
            try:
                npu.ctx.submit(cmd, size, bos=[(bo, READ | WRITE) for bo in npu.bos])
            except OSError as e:
                assert e.errno == errno.EINVAL, fields
            else:
                pytest.fail(f"SUBMIT took {fields}")


INT8_SDP_CASES = [("add", "full", (-128, 127), 0.07), ("add", "channel-0-strides", (-20, 127), 0.07),
                  ("sub", "scalar-dims-1", (-128, 127), 0.07), ("sub", "row-mixed", (-128, 100), 0.03),
                  ("mul", "full", (-128, 127), 0.07), ("mul", "channel-dims-1", (0, 127), 0.0011),
                  ("max", "full", (-100, 120), 0.07), ("min", "scalar-0-strides", (-128, 127), 0.07),
                  ("requant", None, (-128, 127), 0.07), ("requant", None, (-5, 60), 0.013)]


@pytest.mark.parametrize(("op", "src2_kind", "clamp", "so"), INT8_SDP_CASES)
def test_sdp_int8(npu: Npu, op: str, src2_kind: str | None, clamp: tuple[int, int], so: float) -> None:
    """The output scale `so` is chosen so that some rescales shift right and some (so = 0.013, 0.0011) left."""
    rng = rng_for("sdp8", op, src2_kind, clamp)
    lo, hi = clamp
    s1, s2 = 0.05, 0.08
    same_quant = op in ("max", "min")
    z1, z2, zo = (3, 3, 3) if same_quant else (-7, 12, 5)
    x = int8_data(rng, DIMS)
    src = npu.place(x, offset=5, strides=window(DIMS, I8, (0, 1, 0, 3)), zero_point=z1)
    dst = npu.empty(DIMS, I8, offset=9, strides=window(DIMS, I8, (1, 0, 2, 1)), zero_point=zo)
    fields: dict[str, object] = {}
    x2: np.ndarray | None = None
    if op == "requant":
        (mo,), (sho,) = multipliers(np.array([s1 / so]))
        fields.update(op=defs.DRM_EMUDEV_SDP_NONE)
        real = s1 * (x.astype(np.float64) - z1) / so
    else:
        src2, x2 = broadcast_src2(npu, src2_kind, I8, rng, zero_point=z2)  # type: ignore[arg-type]
        fields.update(op=SDP_OPS[op], src2=src2)
        d1, d2 = x.astype(np.float64) - z1, x2.astype(np.float64) - z2
        if op in ("add", "sub"):
            rescale, mo, sho = add_params(s1, s2, so)
            fields.update(rescale)
            real = (s1 * d1 + (s2 if op == "add" else -s2) * d2) / so
        elif op == "mul":
            (mo,), (sho,) = multipliers(np.array([s1 * s2 / so]))
            real = s1 * s2 * d1 * d2 / so
        else:
            mo, sho = 1 << 30, 1  # MAX/MIN share the quantisation: the rescale is the identity
            real = (np.maximum if op == "max" else np.minimum)(d1, d2)
    npu.run(CommandStream().packet("SDP", src=src.t, dst=dst.t, requant=dict(multiplier=int(mo), shift=int(sho),
                                                                            act_min=lo, act_max=hi), **fields))
    got = dst.read()
    want = np.empty(DIMS, I8)
    rescale_fields = {k: v for k, v in fields.items() if k not in ("op", "src2")}
    sdp.sdp(x, x2, want, op=fields["op"], src_zero_point=z1, src2_zero_point=z2,  # type: ignore[arg-type]
            requant=Requant(int(mo), int(sho), lo, hi, zo), **rescale_fields)  # type: ignore[arg-type]
    assert got.tobytes() == want.tobytes(), f"{np.count_nonzero(got != want)} of {got.size} int8 outputs differ"
    approx = np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5) + zo, lo, hi)
    assert_within_one(got, approx)


def test_sources_broadcast_through_zero_strides(npu: Npu) -> None:
    """A 0 stride broadcasts any source dim: GEMM's b over the batch with a's batch dims, SDP's first operand."""
    rng = rng_for("zero-strides")
    a, b = float_data(rng, (2, 3, 4, 5), F32), float_data(rng, (1, 1, 5, 6), F32)
    v, y = float_data(rng, (1, 1, 1, 7), F32), float_data(rng, (2, 3, 4, 7), F32)
    pa, pb, pv, py = npu.place(a), npu.place(b, offset=4), npu.place(v, offset=8), npu.place(y)
    product, total = npu.empty((2, 3, 4, 6), F32), npu.empty(y.shape, F32, offset=12)
    npu.run(CommandStream()
            .packet("GEMM", a=pa.t, b=pb.t.view((2, 3, 5, 6), (0, 0, *pb.strides[2:])), dst=product.t)
            .packet("SDP", op=defs.DRM_EMUDEV_SDP_ADD, src=pv.t.view(y.shape, (0, 0, 0, 4)), src2=py.t, dst=total.t))
    assert_close(product.read(), a @ b, F32)
    assert_close(total.read(), v + y, F32)


@needs_ort
def test_large_tensors_cross_the_engines_chunk_boundaries(npu: Npu) -> None:
    """Shapes big enough that the engines work in blocks: im2col pixel chunks (long K), depthwise int8 row
    chunks, GEMM row chunks and SDP element blocks, all through strided dsts."""
    rng = rng_for("chunks")
    wide = ConvCase(1, 32, 32, 1024, 8, (3, 3), pad=(1, 1, 1, 1), act="relu")
    x, w = float_data(rng, (1, 32, 32, 1024), F32), float_data(rng, wide.weight_dims(), F32)
    bias = float_data(rng, (8,), F32)
    px, pw = npu.place(x, offset=4 * 3), npu.place(w)
    conv_out = npu.empty(wide.out_dims(), F32, offset=4, strides=window(wide.out_dims(), F32, (0, 0, 1, 3)))
    dw = ConvCase(1, 24, 24, 512, 512, (3, 3), pad=(1, 1, 1, 1), groups=512)
    xq, wq = int8_data(rng, (1, 24, 24, 512)), int8_data(rng, dw.weight_dims(), low=-127)
    mult, shift = multipliers(np.full(512, 0.004) * rng.uniform(0.5, 2.0, 512))
    pxq, pwq = npu.place(xq, offset=5, zero_point=-9), npu.place(wq, offset=3)
    dw_out = npu.empty(dw.out_dims(), I8, offset=7, strides=window(dw.out_dims(), I8, (0, 1, 0, 2)), zero_point=4)
    a, b = float_data(rng, (1, 1, 2100, 4096), F32), float_data(rng, (1, 1, 4096, 16), F32)
    pa, pb = npu.place(a, offset=4 * 9), npu.place(b)
    mm = npu.empty((1, 1, 2100, 16), F32, offset=4 * 2, strides=window((1, 1, 2100, 16), F32, (0, 0, 0, 3)))
    big = (1, 64, 64, 600)
    s1, s2 = float_data(rng, big, F32), float_data(rng, (600,), F32)
    ps1, ps2 = npu.place(s1, offset=4), npu.place(s2)
    summed = npu.empty(big, F32, offset=4 * 5, strides=window(big, F32, (0, 1, 0, 0)))
    npu.run(CommandStream()
            .packet("CONV", src=px.t, weight=pw.t, dst=conv_out.t, bias_va=npu.table(bias), act=ACTS["relu"],
                    **wide.fields())
            .packet("CONV", src=pxq.t, weight=pwq.t, dst=dw_out.t, **dw.fields(),
                    requant=dict(table_va=npu.table(np.stack([mult, shift], axis=1).astype(I32)), act_min=-128,
                                 act_max=127))
            .packet("GEMM", a=pa.t, b=pb.t, dst=mm.t)
            .packet("SDP", op=defs.DRM_EMUDEV_SDP_MUL, src=ps1.t, src2=ps2.t.view(big, (0, 0, 0, 4)), dst=summed.t))
    assert_close(conv_out.read(), conv_reference(wide, x, w, bias), F32)
    want = np.empty(dw.out_dims(), I8)
    conv.conv2d(xq, wq, want, pad=dw.pad, groups=512, requant=Requant(mult, shift, -128, 127, 4), src_zero_point=-9)
    got = dw_out.read()
    assert got.tobytes() == want.tobytes(), f"{np.count_nonzero(got != want)} of {got.size} int8 outputs differ"
    exact = conv_int64(xq, wq, -9, 0, dw.stride, dw.dilation, dw.pad, 512)
    assert_within_one(got, requant_float(exact, mult, shift, 4, -128, 127))
    assert_close(mm.read(), run_onnx([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a, "b": b}), F32)
    assert_close(summed.read(), s1 * s2, F32)


# -- PDP ------------------------------------------------------------------------------------------------

PDP_CASES = {
    "max-3x3-s2-pad1": ("max", (3, 3), (2, 2), (1, 1, 1, 1), False),
    "avg-3x3-s1-pad1": ("avg", (3, 3), (1, 1), (1, 1, 1, 1), False),
    "avg-3x3-count-pad": ("avg", (3, 3), (1, 1), (1, 1, 1, 1), True),
    "avg-asym-count-pad": ("avg", (3, 2), (2, 1), (0, 1, 2, 0), True),
    "avg-asym": ("avg", (2, 3), (1, 2), (1, 0, 0, 2), False),
    "max-asym-odd": ("max", (2, 3), (3, 2), (1, 2, 0, 1), False),
    "max-global": ("max", "global", (1, 1), (0, 0, 0, 0), False),
    "avg-global": ("avg", "global", (1, 1), (0, 0, 0, 0), False),
}
PDP_SRC = (2, 9, 11, 6)


def pdp_dims(kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]) -> tuple[int, ...]:
    oh, ow = conv.conv_output_hw(PDP_SRC[1:3], kernel, stride, (1, 1), pad)
    return (PDP_SRC[0], oh, ow, PDP_SRC[3])


def pdp_reference(op: str, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int],
                  count_pad: bool, x: np.ndarray, is_global: bool) -> np.ndarray:
    if is_global:
        node = helper.make_node("GlobalMaxPool" if op == "max" else "GlobalAveragePool", ["x"], ["y"])
    elif op == "max":
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(stride),
                                pads=list(pad))
    else:
        node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(stride),
                                pads=list(pad), count_include_pad=int(count_pad))
    return nhwc(run_onnx([node], {"x": nchw(x.astype(F32))}))


@needs_ort
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("name", PDP_CASES)
def test_pdp_float(npu: Npu, name: str, dtype: type) -> None:
    op, kernel, stride, pad, count_pad = PDP_CASES[name]
    is_global = kernel == "global"
    kernel = PDP_SRC[1:3] if is_global else kernel
    rng = rng_for("pdp", name, np.dtype(dtype).name)
    x = float_data(rng, PDP_SRC, dtype)
    out = pdp_dims(kernel, stride, pad)
    item = np.dtype(dtype).itemsize
    src = npu.place(x, offset=item * 7, strides=window(PDP_SRC, dtype, (0, 2, 1, 2)))
    dst = npu.empty(out, dtype, offset=item * 3, strides=window(out, dtype, (1, 1, 0, 1)))
    npu.run(CommandStream().packet("PDP", op=defs.DRM_EMUDEV_PDP_MAX if op == "max" else defs.DRM_EMUDEV_PDP_AVG,
                                   flags=defs.DRM_EMUDEV_PDP_COUNT_PAD if count_pad else 0, src=src.t, dst=dst.t,
                                   kernel=kernel, stride=stride, pad=pad))
    assert_close(dst.read(), pdp_reference(op, kernel, stride, pad, count_pad, x, is_global), dtype)


@pytest.mark.parametrize("name", PDP_CASES)
def test_pdp_int8(npu: Npu, name: str) -> None:
    op, kernel, stride, pad, count_pad = PDP_CASES[name]
    kernel = PDP_SRC[1:3] if kernel == "global" else kernel
    rng = rng_for("pdp8", name)
    zp = -13
    x = int8_data(rng, PDP_SRC)
    out = pdp_dims(kernel, stride, pad)
    src = npu.place(x, offset=3, strides=channel_major(PDP_SRC, I8), zero_point=zp)
    dst = npu.empty(out, I8, offset=1, strides=window(out, I8, (0, 1, 1, 3)), zero_point=zp)
    pdp_op = defs.DRM_EMUDEV_PDP_MAX if op == "max" else defs.DRM_EMUDEV_PDP_AVG
    npu.run(CommandStream().packet("PDP", op=pdp_op, flags=defs.DRM_EMUDEV_PDP_COUNT_PAD if count_pad else 0,
                                   src=src.t, dst=dst.t, kernel=kernel, stride=stride, pad=pad))
    got = dst.read()
    want = np.empty(out, I8)
    pdp.pool2d(x, want, op=pdp_op, kernel=kernel, stride=stride, pad=pad, count_pad=count_pad, zero_point=zp)
    assert got.tobytes() == want.tobytes(), f"{np.count_nonzero(got != want)} of {got.size} int8 outputs differ"
    # independent of the ops: the float pooling of the same integers, rounded, is within one quantum
    xf = x.astype(np.float64) - zp
    if op == "max":
        ref = pdp_reference("max", kernel, stride, pad, False, xf, False) + zp
    else:
        ref = pdp_reference("avg", kernel, stride, pad, count_pad, xf, False) + zp
    assert_within_one(got, np.round(ref))


# -- CDP ------------------------------------------------------------------------------------------------

CDP_CASES = {
    "lrn-3": (defs.DRM_EMUDEV_CDP_LRN, 3, (1, 4, 5, 8)),
    "lrn-5": (defs.DRM_EMUDEV_CDP_LRN, 5, (2, 3, 3, 16)),
    "lrn-window-beyond-c": (defs.DRM_EMUDEV_CDP_LRN, 9, (1, 2, 3, 4)),
    "lrn-wide": (defs.DRM_EMUDEV_CDP_LRN, 41, (1, 2, 2, 64)),
    "softmax": (defs.DRM_EMUDEV_CDP_SOFTMAX, 0, (2, 3, 4, 10)),
    "softmax-large-logits": (defs.DRM_EMUDEV_CDP_SOFTMAX, 0, (1, 1, 3, 1000)),
}


@needs_ort
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("name", CDP_CASES)
def test_cdp(npu: Npu, name: str, dtype: type) -> None:
    op, size, dims = CDP_CASES[name]
    rng = rng_for("cdp", name, np.dtype(dtype).name)
    x = float_data(rng, dims, dtype) * (30 if "large" in name else 2)
    alpha, beta, bias = 0.3, 0.75, 1.5
    item = np.dtype(dtype).itemsize
    src = npu.place(x, offset=item * 5, strides=window(dims, dtype, (0, 1, 0, 3)))
    dst = npu.empty(dims, dtype, offset=item * 2, strides=window(dims, dtype, (1, 0, 1, 1)))
    npu.run(CommandStream().packet("CDP", op=op, size=size, src=src.t, dst=dst.t,
                                   **(dict(alpha=alpha, beta=beta, bias=bias) if size else {})))
    if op == defs.DRM_EMUDEV_CDP_LRN:
        node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
        want = nhwc(run_onnx([node], {"x": nchw(x.astype(F32))}))
    else:
        want = run_onnx([helper.make_node("Softmax", ["x"], ["y"], axis=3)], {"x": x.astype(F32)})
    got = dst.read()
    assert_close(got, want, dtype)
    if op == defs.DRM_EMUDEV_CDP_SOFTMAX:
        assert np.isfinite(got).all()


# -- BDMA -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F16, I8, I32])
def test_bdma_concat_and_split_through_channel_slices(npu: Npu, dtype: type) -> None:
    """Two tensors copied into channel slices of a bigger one (concat), then a slice copied out (split)."""
    rng = rng_for("concat", np.dtype(dtype).name)
    item = np.dtype(dtype).itemsize
    n, h, w, c1, c2, extra = 2, 4, 5, 3, 6, 2
    ctot = c1 + c2 + extra  # the last `extra` channels are never written
    a = rng.integers(-100, 100, (n, h, w, c1)).astype(dtype)
    b = rng.integers(-100, 100, (n, h, w, c2)).astype(dtype)
    pa = npu.place(a, offset=item * 3, strides=window(a.shape, dtype, (0, 1, 1, 0)))
    pb = npu.place(b, offset=item * 8)
    big = npu.empty((n, h, w, ctot), dtype, offset=item * 5)
    part = npu.empty((n, h, w, c2 - 2), dtype, offset=item * 4)
    big_strides = big.strides
    stream = (CommandStream()
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=pa.t, dst=big.t.view(a.shape, big_strides))
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=pb.t,
                      dst=big.t.view(b.shape, big_strides, offset=c1 * item))
              # split: channels [c1 + 1, c1 + c2 - 1) of the concatenation, copied out after the two above
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=big.t.view(part.dims, big_strides,
                                                                               offset=(c1 + 1) * item), dst=part.t))
    npu.run(stream)
    got = big.read()
    np.testing.assert_array_equal(got[..., :c1 + c2], np.concatenate([a, b], axis=3))
    assert got[..., c1 + c2:].tobytes() == bytes([SENTINEL]) * (n * h * w * extra * item)
    np.testing.assert_array_equal(part.read(), b[..., 1:c2 - 1])


@pytest.mark.parametrize(("dtype", "bits", "value"), [
    (F32, struct.unpack("<I", struct.pack("<f", -2.5))[0], -2.5), (F16, 0x3E00, 1.5), (F16, 0xABCD3C00, 1.0),
    (I8, 0x1234_56F3, -13), (I32, 0x8000_0001, -0x7FFF_FFFF)])
def test_bdma_fill_strided(npu: Npu, dtype: type, bits: int, value: float) -> None:
    """FILL writes the low bytes of fill_value into every element of a strided view, nothing between."""
    dims = (2, 3, 4, 5)
    dst = npu.empty(dims, dtype, offset=np.dtype(dtype).itemsize * 3, strides=window(dims, dtype, (1, 1, 2, 3)))
    npu.run(CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=bits, dst=dst.t))
    got = dst.read()
    assert (got == np.array(value, dtype)).all()


def test_bdma_fp32_fp16_conversions(npu: Npu) -> None:
    """fp32 -> fp16 rounds to nearest even (ties, overflow to inf, subnormals, NaN); fp16 -> fp32 is exact."""
    rng = rng_for("convert")
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 1e-9, 2.0 ** -24 * 1.5,
                        1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, np.inf, -np.inf, np.nan], F32)
    x = np.concatenate([special, float_data(rng, (64 - special.size,), F32) * 100]).reshape(1, 4, 4, 4)
    src = npu.place(x, offset=4 * 7, strides=window(x.shape, F32, (0, 1, 0, 2)))
    half = npu.empty(x.shape, F16, offset=2 * 3, strides=window(x.shape, F16, (0, 0, 1, 1)))
    back = npu.empty(x.shape, F32, offset=4 * 9)
    h_src = float_data(rng, (2, 3, 4, 5), F16)
    h_src.flat[:4] = [np.inf, -0.0, np.float16(6e-8), np.nan]
    p_h = npu.place(h_src, offset=2)
    widened = npu.empty(h_src.shape, F32, offset=4 * 2)
    stream = (CommandStream()
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=src.t, dst=half.t)
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=half.t, dst=back.t)
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=p_h.t, dst=widened.t))
    npu.run(stream)
    with np.errstate(over="ignore"):
        want_half = x.astype(F16)
    assert half.read().view(np.uint16).tobytes() == want_half.view(np.uint16).tobytes()
    np.testing.assert_array_equal(back.read(), want_half.astype(F32))
    np.testing.assert_array_equal(widened.read(), h_src.astype(F32))


@pytest.mark.parametrize("dtype", [F32, I8])
def test_bdma_copy_broadcasts_a_zero_stride_source(npu: Npu, dtype: type) -> None:
    """A source with 0 strides: one row replicated along H and one value along N."""
    rng = rng_for("bcast", np.dtype(dtype).name)
    row = rng.integers(-50, 50, (1, 1, 6, 3)).astype(dtype)
    dims = (2, 4, 6, 3)
    p = npu.place(row, offset=np.dtype(dtype).itemsize * 2)
    dst = npu.empty(dims, dtype, strides=window(dims, dtype, (0, 1, 0, 1)), offset=np.dtype(dtype).itemsize)
    npu.run(CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=p.t.view(dims, (0, 0, *p.strides[2:])),
                                   dst=dst.t))
    np.testing.assert_array_equal(dst.read(), np.broadcast_to(row, dims))


# -- RUBIK ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("perm", "dtype"), [((0, 3, 1, 2), F32), ((3, 2, 1, 0), F16), ((1, 0, 3, 2), I8),
                                             ((2, 3, 0, 1), I32), ((0, 2, 1, 3), F32)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rubik_transpose(npu: Npu, perm: tuple[int, ...], dtype: type, layout: str) -> None:
    rng = rng_for("transpose", perm, layout)
    dims = (2, 3, 5, 7)
    x = rng.integers(-100, 100, dims).astype(dtype)
    out = tuple(dims[p] for p in perm)
    item = np.dtype(dtype).itemsize
    if layout == "packed":
        src, dst = npu.place(x), npu.empty(out, dtype)
    else:
        src = npu.place(x, offset=item * 5, strides=channel_major(dims, dtype))
        dst = npu.empty(out, dtype, offset=item * 3, strides=window(out, dtype, (1, 0, 1, 2)))
    npu.run(CommandStream().packet("RUBIK", op=defs.DRM_EMUDEV_RUBIK_TRANSPOSE, src=src.t, dst=dst.t, perm=perm))
    np.testing.assert_array_equal(dst.read(), np.transpose(x, perm))


@pytest.mark.parametrize(("src_layout", "out", "dtype"), [
    ("channel-slice", (1, 2, 15, 8), F32), ("channel-major", (4, 1, 1, 60), I8), ("channel-slice", (6, 5, 4, 2), F16),
    ("transposed", (2, 2, 3, 10), I32)])
def test_rubik_reshape_of_a_non_contiguous_view(npu: Npu, src_layout: str, out: tuple[int, ...], dtype: type) -> None:
    """Elements taken in the view's row-major order, not memory order, and stored in dst's (strided) order."""
    rng = rng_for("reshape", src_layout, out)
    item = np.dtype(dtype).itemsize
    dims = (2, 3, 5, 8) if src_layout == "channel-slice" else (2, 5, 3, 4) if src_layout == "channel-major" \
        else (3, 4, 2, 5)
    total = int(np.prod(dims))
    out = (*out[:3], total // int(np.prod(out[:3])))
    if src_layout == "channel-slice":  # channels [2, 10) of a 13-channel tensor
        big = rng.integers(-100, 100, (*dims[:3], 13)).astype(dtype)
        holder = npu.place(big, offset=item * 3)
        src_t, x = holder.t.view(dims, holder.strides, offset=2 * item), big[..., 2:10]
    elif src_layout == "channel-major":
        x = rng.integers(-100, 100, dims).astype(dtype)
        src_t = npu.place(x, offset=item, strides=channel_major(dims, dtype)).t
    else:  # memory holds [d3, d2, d1, d0]; the view reads it reversed
        mem = rng.integers(-100, 100, dims[::-1]).astype(dtype)
        holder = npu.place(mem)
        src_t, x = holder.t.view(dims, holder.strides[::-1]), mem.transpose(3, 2, 1, 0)
    dst = npu.empty(out, dtype, offset=item * 6, strides=window(out, dtype, (0, 1, 0, 1)))
    npu.run(CommandStream().packet("RUBIK", op=defs.DRM_EMUDEV_RUBIK_RESHAPE, src=src_t, dst=dst.t))
    np.testing.assert_array_equal(dst.read(), np.reshape(x, out))


# -- several engines in one job -------------------------------------------------------------------------


@needs_ort
def test_conv_sdp_pdp_chained_by_semaphores_in_one_job(npu: Npu) -> None:
    """CONV -> SDP (batch norm + ReLU) -> PDP (max pool): three engines, one job, ordered only by semaphores.

    The packets are even listed in the reverse order of the data flow: each engine starts at once and
    would read a sentinel-filled intermediate if a SEM_WAIT did not hold it back."""
    rng = rng_for("chain")
    case = ConvCase(1, 32, 32, 16, 24, (3, 3), pad=(1, 1, 1, 1))
    x = float_data(rng, (1, 32, 32, 16), F32)
    w = float_data(rng, case.weight_dims(), F32)
    bias, scale, shift = (float_data(rng, (24,), F32) for _ in range(3))
    src, weight = npu.place(x, offset=64), npu.place(w)
    mid = npu.empty(case.out_dims(), F32, offset=4 * 9)
    act = npu.empty(case.out_dims(), F32, offset=4 * 3, strides=window(case.out_dims(), F32, (0, 0, 1, 2)))
    pooled_dims = (1, 16, 16, 24)
    out = npu.empty(pooled_dims, F32, offset=4)
    sems = npu.place(np.zeros(4, np.uint32))
    stamps = npu.place(np.zeros(4, np.uint64))
    conv_done, sdp_done = sems.va, sems.va + 4
    stream = (CommandStream()
              .sem_wait(PDP_E, sdp_done, 1)
              .timestamp(PDP_E, stamps.va + 16)
              .packet("PDP", op=defs.DRM_EMUDEV_PDP_MAX, src=act.t, dst=out.t, kernel=(2, 2), stride=(2, 2))
              .sem_wait(SDP_E, conv_done, 7, cond=defs.DRM_EMUDEV_SEM_EQUAL)
              .timestamp(SDP_E, stamps.va + 8)
              .packet("SDP", op=defs.DRM_EMUDEV_SDP_NONE, src=mid.t, dst=act.t, scale_va=npu.table(scale),
                      bias_va=npu.table(shift), act=ACTS["relu"])
              .timestamp(SDP_E, stamps.va + 24)
              .sem_signal(SDP_E, sdp_done, 1, op=defs.DRM_EMUDEV_SEM_ADD)
              .nop()
              .packet("CONV", src=src.t, weight=weight.t, dst=mid.t, bias_va=npu.table(bias), **case.fields())
              .timestamp(CONV_E, stamps.va)
              .sem_signal(CONV_E, conv_done, 7))
    npu.run(stream)
    inputs = {"x": nchw(x), "w": np.ascontiguousarray(w.transpose(0, 3, 1, 2)), "b": bias,
              "s": scale.reshape(1, -1, 1, 1), "t": shift.reshape(1, -1, 1, 1)}
    want = nhwc(run_onnx([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                          helper.make_node("Mul", ["c", "s"], ["cs"]), helper.make_node("Add", ["cs", "t"], ["ct"]),
                          helper.make_node("Relu", ["ct"], ["r"]),
                          helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], inputs))
    assert_close(out.read(), want, F32)
    with sems.bo.cpu_access(write=False) as memory:
        assert list(sems.view(memory).reshape(-1)) == [7, 1, 0, 0]
    with stamps.bo.cpu_access(write=False) as memory:
        conv_end, sdp_start, pdp_start, sdp_end = (int(v) for v in stamps.view(memory).reshape(-1))
    assert conv_end <= sdp_start <= sdp_end <= pdp_start


def test_independent_engines_in_one_job(npu: Npu) -> None:
    """GEMM, BDMA and RUBIK packets interleaved in one stream with no semaphore: each engine runs its own."""
    rng = rng_for("independent")
    a, b = float_data(rng, (1, 1, 96, 128), F32), float_data(rng, (1, 1, 128, 80), F32)
    t = rng.integers(-1000, 1000, (3, 8, 9, 10)).astype(I32)
    c = float_data(rng, (2, 16, 16, 8), F16)
    pa, pb = npu.place(a), npu.place(b, offset=4 * 4)
    product = npu.empty((1, 1, 96, 80), F32, offset=4 * 2)
    pt = npu.place(t, offset=4 * 3)
    transposed = npu.empty((10, 9, 8, 3), I32, offset=4)
    pc = npu.place(c, offset=2 * 5, strides=window(c.shape, F16, (0, 1, 1, 0)))
    copied = npu.empty(c.shape, F32, offset=4 * 6)
    stamps = npu.place(np.zeros(3, np.uint64))
    stream = (CommandStream()
              .packet("RUBIK", op=defs.DRM_EMUDEV_RUBIK_TRANSPOSE, src=pt.t, dst=transposed.t, perm=(3, 2, 1, 0))
              .packet("GEMM", a=pa.t, b=pb.t, dst=product.t)
              .packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=pc.t, dst=copied.t)
              .timestamp(RUBIK_E, stamps.va).timestamp(CONV_E, stamps.va + 8).timestamp(BDMA_E, stamps.va + 16))
    npu.run(stream)
    np.testing.assert_array_equal(transposed.read(), t.transpose(3, 2, 1, 0))
    np.testing.assert_allclose(product.read()[0, 0], a[0, 0] @ b[0, 0], rtol=1e-4, atol=1e-4 * 12)
    np.testing.assert_array_equal(copied.read(), c.astype(F32))
    with stamps.bo.cpu_access(write=False) as memory:
        assert (stamps.view(memory) > 0).all()  # every engine's queue ran to its end
