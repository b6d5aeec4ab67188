"""What each compute packet does: operands fetched through the IOMMU, numpy in place.

Every tensor is translated through the submitting file's address space when the
packet runs, not when it was submitted: a BO unmapped since, or a write to a
device-read-only BO, is a fault, as an IOMMU would report it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emudev.engine import tensor
from emudev.engine.ops import bdma, cdp, conv, pdp, rubik, sdp
from emudev.engine.ops.activation import Activation
from emudev.engine.ops.quant import Requant
from emudev.engine.program import Step
from emudev.engine.vm import AddressSpace
from emudev.uapi import defs


class EngineFault(Exception):
    def __init__(self, va: int, reason: str) -> None:
        super().__init__(reason)
        self.va = va
        self.reason = reason


class DeviceMemory:
    """A running job's window on device memory: its file's address space."""

    def __init__(self, space: AddressSpace) -> None:
        self.space = space

    def _translate(self, va: int, length: int, write: bool) -> tuple[memoryview, int]:
        found = self.space.translate(va, length)
        if found is None:
            raise EngineFault(va, f"[{va:#x}, +{length}) is not mapped")
        if write and found.obj.flags & defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY:
            raise EngineFault(va, f"write to device-read-only BO {found.obj.id}")
        return found.obj.memory.view(), found.offset

    def tensor(self, t: defs.drm_emudev_tensor, *, write: bool = False) -> np.ndarray:
        extent = tensor.span(t)
        buffer, offset = self._translate(extent.va, extent.length, write)
        return tensor.view(buffer, offset, t)

    def table(self, va: int, count: int, dtype: type) -> np.ndarray | None:
        """A per-channel vector, or None where the packet gives no address."""
        if not va:
            return None
        size = np.dtype(dtype).itemsize * count
        buffer, offset = self._translate(va, size, False)
        return np.ndarray((count,), dtype=dtype, buffer=buffer, offset=offset)

    def word(self, va: int, dtype: type, *, write: bool) -> np.ndarray:
        buffer, offset = self._translate(va, np.dtype(dtype).itemsize, write)
        return np.ndarray((1,), dtype=dtype, buffer=buffer, offset=offset)


def _activation(act: defs.drm_emudev_activation) -> Activation:
    return Activation(act.fn, act.alpha, act.clip_min, act.clip_max)


def _requant(mem: DeviceMemory, rq: defs.drm_emudev_requant, dst: defs.drm_emudev_tensor,
             channels: int) -> Requant | None:
    if dst.dtype != defs.DRM_EMUDEV_DTYPE_INT8:
        return None
    if rq.table_va:
        pairs = mem.table(rq.table_va, 2 * channels, np.int32).reshape(channels, 2)
        return Requant(pairs[:, 0].copy(), pairs[:, 1].copy(), rq.act_min, rq.act_max, dst.zero_point)
    return Requant(rq.multiplier, rq.shift, rq.act_min, rq.act_max, dst.zero_point)


def _bias(mem: DeviceMemory, va: int, count: int, dst: defs.drm_emudev_tensor) -> np.ndarray | None:
    integer = dst.dtype in (defs.DRM_EMUDEV_DTYPE_INT8, defs.DRM_EMUDEV_DTYPE_INT32)
    return mem.table(va, count, np.int32 if integer else np.float32)


def _conv(mem: DeviceMemory, p: defs.drm_emudev_pkt_conv) -> None:
    channels = p.dst.dims[3]
    conv.conv2d(mem.tensor(p.src), mem.tensor(p.weight), mem.tensor(p.dst, write=True),
                bias=_bias(mem, p.bias_va, channels, p.dst), stride=tuple(p.stride), dilation=tuple(p.dilation),
                pad=tuple(p.pad), groups=p.groups, act=_activation(p.act),
                requant=_requant(mem, p.requant, p.dst, channels), src_zero_point=p.src.zero_point,
                weight_zero_point=p.weight.zero_point)


def _gemm(mem: DeviceMemory, p: defs.drm_emudev_pkt_gemm) -> None:
    columns = p.dst.dims[3]
    conv.gemm(mem.tensor(p.a), mem.tensor(p.b), mem.tensor(p.dst, write=True),
              bias=_bias(mem, p.bias_va, columns, p.dst),
              transpose_b=bool(p.flags & defs.DRM_EMUDEV_GEMM_TRANSPOSE_B), act=_activation(p.act),
              requant=_requant(mem, p.requant, p.dst, columns), a_zero_point=p.a.zero_point,
              b_zero_point=p.b.zero_point)


def _sdp(mem: DeviceMemory, p: defs.drm_emudev_pkt_sdp) -> None:
    channels = p.dst.dims[3]
    src2 = None if p.op == defs.DRM_EMUDEV_SDP_NONE else mem.tensor(p.src2)
    sdp.sdp(mem.tensor(p.src), src2, mem.tensor(p.dst, write=True), op=p.op,
            scale=mem.table(p.scale_va, channels, np.float32), bias=mem.table(p.bias_va, channels, np.float32),
            act=_activation(p.act), src_zero_point=p.src.zero_point, src2_zero_point=p.src2.zero_point,
            src_multiplier=p.src_multiplier, src_shift=p.src_shift, src2_multiplier=p.src2_multiplier,
            src2_shift=p.src2_shift, left_shift=p.left_shift, requant=_requant(mem, p.requant, p.dst, channels))


def _pdp(mem: DeviceMemory, p: defs.drm_emudev_pkt_pdp) -> None:
    pdp.pool2d(mem.tensor(p.src), mem.tensor(p.dst, write=True), op=p.op, kernel=tuple(p.kernel),
               stride=tuple(p.stride), pad=tuple(p.pad), count_pad=bool(p.flags & defs.DRM_EMUDEV_PDP_COUNT_PAD),
               zero_point=p.src.zero_point)


def _cdp(mem: DeviceMemory, p: defs.drm_emudev_pkt_cdp) -> None:
    src, dst = mem.tensor(p.src), mem.tensor(p.dst, write=True)
    if p.op == defs.DRM_EMUDEV_CDP_LRN:
        cdp.lrn(src, dst, size=p.size, alpha=p.alpha, beta=p.beta, bias=p.bias)
    else:
        cdp.softmax(src, dst)


def _bdma(mem: DeviceMemory, p: defs.drm_emudev_pkt_bdma) -> None:
    dst = mem.tensor(p.dst, write=True)
    if p.op == defs.DRM_EMUDEV_BDMA_FILL:
        bdma.fill(dst, p.fill_value)
    else:
        bdma.copy(mem.tensor(p.src), dst)


def _rubik(mem: DeviceMemory, p: defs.drm_emudev_pkt_rubik) -> None:
    src, dst = mem.tensor(p.src), mem.tensor(p.dst, write=True)
    if p.op == defs.DRM_EMUDEV_RUBIK_TRANSPOSE:
        rubik.transpose(src, dst, tuple(p.perm))
    else:
        rubik.reshape(src, dst)


COMPUTE: dict[str, Callable[[DeviceMemory, defs.UapiStruct], None]] = {
    "CONV": _conv,
    "GEMM": _gemm,
    "SDP": _sdp,
    "PDP": _pdp,
    "CDP": _cdp,
    "BDMA": _bdma,
    "RUBIK": _rubik,
}


def run_compute(mem: DeviceMemory, step: Step) -> None:
    COMPUTE[step.name](mem, step.packet)
