"""SUBMIT's check of a whole command stream before anything is queued.

Structure (opcode, length, reserved fields, enum values) comes from the ISA spec;
shapes and dtypes from each op's checker; every address range must lie inside one BO
of the file's address space (EFAULT) and no packet may write a device-read-only BO
(EINVAL). The result is the Program the engines run.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.engine import tensor
from emudev.engine.ops import bdma as bdma_ops
from emudev.engine.ops import cdp, conv, pdp, sdp
from emudev.engine.ops import rubik as rubik_ops
from emudev.engine.program import Access, Program, Step
from emudev.engine.vm import AddressSpace
from emudev.uapi import defs, isa

if TYPE_CHECKING:
    from emudev.gem.object import GemObject

_INT8 = defs.DRM_EMUDEV_DTYPE_INT8
_SEMAPHORE_BYTES = 4
_TIMESTAMP_BYTES = 8


class Invalid(OSError):
    """A malformed stream: EINVAL with the packet named."""

    def __init__(self, where: str, reason: str, code: int = errno.EINVAL) -> None:
        super().__init__(code, f"{where}: {reason}")


Rule = Callable[[defs.UapiStruct], list[Access]]


def build_program(stream: bytes, space: AddressSpace) -> tuple[Program, list[GemObject]]:
    """Decode and check `stream`; raise Invalid (EINVAL/EFAULT) naming the first bad packet.
    Returns the program and the BOs its packets address.

    What depends only on the bytes is cached, so a command buffer built once and submitted
    again costs only the address checks, which depend on the file's mappings of the moment."""
    program = _decode(stream)
    addressed = [_check_mapped(space, access, step) for step in program.steps for access in step.accesses]
    return program, addressed


@functools.lru_cache(maxsize=64)
def _decode(stream: bytes) -> Program:
    steps = []
    for decoded in isa.decode_stream(stream):
        where = _where(decoded.index, decoded.spec.name, decoded.offset)
        reason = isa.check_fields(decoded)
        if reason:
            raise Invalid(where, reason)
        packet = decoded.packet
        try:
            accesses = _RULES[decoded.spec.name](packet)
        except _Reject as rejected:
            raise Invalid(where, str(rejected)) from None
        engine = decoded.spec.engine if decoded.spec.engine is not None else packet.engine
        steps.append(Step(decoded.index, decoded.offset, engine, decoded.spec.name, packet, tuple(accesses)))
    return Program(tuple(steps))


def _where(index: int, name: str, offset: int) -> str:
    return f"packet {index} ({name} at offset {offset})"


class _Reject(Exception):
    pass


def _require(reason: str | None) -> None:
    if reason:
        raise _Reject(reason)


def _check_mapped(space: AddressSpace, access: Access, step: Step) -> GemObject:
    found = space.translate(access.va, access.length)
    if found is None:
        raise Invalid(_where(step.index, step.name, step.offset),
                      f"{access.what} [{access.va:#x}, +{access.length}) is not inside one mapped BO", errno.EFAULT)
    if access.write and found.obj.flags & defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY:
        raise Invalid(_where(step.index, step.name, step.offset),
                      f"{access.what} writes BO {found.obj.id}, which is device read-only")
    return found.obj


# -- operands -------------------------------------------------------------------------------


def _tensor(t: defs.drm_emudev_tensor, what: str, *, write: bool) -> Access:
    _require(_prefixed(what, tensor.check(t, written=write)))
    if t.va % tensor.itemsize(t.dtype):
        raise _Reject(f"{what}: va {t.va:#x} is not aligned to its element size")
    extent = tensor.span(t)
    return Access(extent.va, extent.length, write, what)


def _prefixed(what: str, reason: str | None) -> str | None:
    return f"{what}: {reason}" if reason else None


def _zero_tensor(t: defs.drm_emudev_tensor, what: str) -> None:
    if bytes(t).strip(b"\0"):
        raise _Reject(f"{what} must be all zero here")


def _table(va: int, count: int, item: int, what: str) -> list[Access]:
    """An optional per-channel table (biases, scales, requantisation pairs)."""
    if not va:
        return []
    if va % 4:
        raise _Reject(f"{what}: va {va:#x} is not 4-byte aligned")
    return [Access(va, count * item, False, what)]


def _activation(act: defs.drm_emudev_activation, dst: defs.drm_emudev_tensor) -> None:
    if dst.dtype in (_INT8, defs.DRM_EMUDEV_DTYPE_INT32):
        if bytes(act).strip(b"\0"):
            raise _Reject("act must be all zero for an integer dst (int8 clamps with requant)")
    elif act.fn == defs.DRM_EMUDEV_ACT_CLIP and not act.clip_min <= act.clip_max:
        raise _Reject("act: clip_min is above clip_max")


def _requant(rq: defs.drm_emudev_requant, dst: defs.drm_emudev_tensor, channels: int) -> list[Access]:
    if dst.dtype != _INT8:
        if bytes(rq).strip(b"\0"):
            raise _Reject("requant must be all zero unless dst is int8")
        return []
    if not -128 <= rq.act_min <= rq.act_max <= 127:
        raise _Reject(f"requant: [act_min, act_max] = [{rq.act_min}, {rq.act_max}] is not inside [-128, 127]")
    if rq.table_va:
        if rq.multiplier or rq.shift:
            raise _Reject("requant: multiplier and shift must be 0 with a table")
        return _table(rq.table_va, channels, 8, "requant table")
    if (rq.multiplier and not 1 << 30 <= rq.multiplier < 1 << 31) or rq.multiplier < 0:
        raise _Reject(f"requant: multiplier {rq.multiplier} is outside [2^30, 2^31)")
    if not -31 <= rq.shift <= 30:
        raise _Reject(f"requant: shift {rq.shift} is outside [-31, 30]")
    return []


def _is_requantised(dst: defs.drm_emudev_tensor) -> bool:
    return dst.dtype == _INT8


# -- packets --------------------------------------------------------------------------------


def _nop(p: defs.UapiStruct) -> list[Access]:
    return []


def _semaphore(p: defs.UapiStruct) -> list[Access]:
    if p.va % _SEMAPHORE_BYTES:
        raise _Reject(f"va {p.va:#x} is not 4-byte aligned")
    return [Access(p.va, _SEMAPHORE_BYTES, p.header.opcode == defs.DRM_EMUDEV_OP_SEM_SIGNAL, "semaphore")]


def _timestamp(p: defs.UapiStruct) -> list[Access]:
    if p.va % _TIMESTAMP_BYTES:
        raise _Reject(f"va {p.va:#x} is not 8-byte aligned")
    return [Access(p.va, _TIMESTAMP_BYTES, True, "timestamp")]


def _conv(p: defs.drm_emudev_pkt_conv) -> list[Access]:
    accesses = [_tensor(p.src, "src", write=False), _tensor(p.weight, "weight", write=False),
                _tensor(p.dst, "dst", write=True)]
    _require(conv.check_conv(
        tensor.dims_of(p.src), tensor.dims_of(p.weight), tensor.dims_of(p.dst), p.src.dtype, p.weight.dtype,
        p.dst.dtype, tuple(p.stride), tuple(p.dilation), tuple(p.pad), p.groups, p.act.fn,
        _is_requantised(p.dst)))
    _activation(p.act, p.dst)
    channels = p.dst.dims[3]
    return accesses + _table(p.bias_va, channels, 4, "bias") + _requant(p.requant, p.dst, channels)


def _gemm(p: defs.drm_emudev_pkt_gemm) -> list[Access]:
    accesses = [_tensor(p.a, "a", write=False), _tensor(p.b, "b", write=False), _tensor(p.dst, "dst", write=True)]
    _require(conv.check_gemm(
        tensor.dims_of(p.a), tensor.dims_of(p.b), tensor.dims_of(p.dst), p.a.dtype, p.b.dtype, p.dst.dtype,
        bool(p.flags & defs.DRM_EMUDEV_GEMM_TRANSPOSE_B), p.act.fn, _is_requantised(p.dst)))
    _activation(p.act, p.dst)
    columns = p.dst.dims[3]
    return accesses + _table(p.bias_va, columns, 4, "bias") + _requant(p.requant, p.dst, columns)


def _sdp(p: defs.drm_emudev_pkt_sdp) -> list[Access]:
    accesses = [_tensor(p.src, "src", write=False), _tensor(p.dst, "dst", write=True)]
    if p.op == defs.DRM_EMUDEV_SDP_NONE:
        _zero_tensor(p.src2, "src2")
    else:
        accesses.append(_tensor(p.src2, "src2", write=False))
    none = p.op == defs.DRM_EMUDEV_SDP_NONE
    _require(sdp.check_sdp(
        p.op, tensor.dims_of(p.src), None if none else tensor.dims_of(p.src2), tensor.dims_of(p.dst), p.src.dtype,
        None if none else p.src2.dtype, p.dst.dtype, p.act.fn, _is_requantised(p.dst), bool(p.scale_va),
        bool(p.bias_va), p.left_shift))
    _activation(p.act, p.dst)
    channels = p.dst.dims[3]
    converting = none and (p.src.dtype == _INT8) != (p.dst.dtype == _INT8)
    if (converting or p.dst.dtype != _INT8) and (p.src_multiplier or p.src_shift or p.src2_multiplier
                                                 or p.src2_shift or p.left_shift):
        raise _Reject("the int8 rescale fields must be zero unless both src and dst are int8")
    if converting and (p.requant.table_va or p.requant.multiplier or p.requant.shift):
        raise _Reject("quantising scales with scale_va: requant gives only act_min, act_max")
    if (p.dst.dtype == _INT8 and p.op in (defs.DRM_EMUDEV_SDP_MAX, defs.DRM_EMUDEV_SDP_MIN)
            and not p.src.zero_point == p.src2.zero_point == p.dst.zero_point):
        raise _Reject("int8 MAX and MIN need src, src2 and dst to share the zero point")
    return (accesses + _table(p.scale_va, channels, 4, "scale") + _table(p.bias_va, channels, 4, "bias")
            + _requant(p.requant, p.dst, channels))


def _pdp(p: defs.drm_emudev_pkt_pdp) -> list[Access]:
    accesses = [_tensor(p.src, "src", write=False), _tensor(p.dst, "dst", write=True)]
    _require(pdp.check_pool(p.op, tensor.dims_of(p.src), tensor.dims_of(p.dst), p.src.dtype, p.dst.dtype,
                            tuple(p.kernel), tuple(p.stride), tuple(p.pad)))
    if p.src.dtype == _INT8 and p.src.zero_point != p.dst.zero_point:
        raise _Reject("int8 src and dst must share the zero point")
    return accesses


def _cdp(p: defs.drm_emudev_pkt_cdp) -> list[Access]:
    accesses = [_tensor(p.src, "src", write=False), _tensor(p.dst, "dst", write=True)]
    _require(cdp.check_cdp(p.op, tensor.dims_of(p.src), tensor.dims_of(p.dst), p.src.dtype, p.dst.dtype, p.size))
    return accesses


def _bdma(p: defs.drm_emudev_pkt_bdma) -> list[Access]:
    fill = p.op == defs.DRM_EMUDEV_BDMA_FILL
    accesses = [_tensor(p.dst, "dst", write=True)]
    if fill:
        _zero_tensor(p.src, "src")
    else:
        accesses.insert(0, _tensor(p.src, "src", write=False))
    _require(bdma_ops.check_bdma(p.op, None if fill else tensor.dims_of(p.src), tensor.dims_of(p.dst),
                                 None if fill else p.src.dtype, p.dst.dtype))
    return accesses


def _rubik(p: defs.drm_emudev_pkt_rubik) -> list[Access]:
    accesses = [_tensor(p.src, "src", write=False), _tensor(p.dst, "dst", write=True)]
    _require(rubik_ops.check_rubik(p.op, tensor.dims_of(p.src), tensor.dims_of(p.dst), p.src.dtype, p.dst.dtype,
                                   tuple(p.perm)))
    return accesses


_RULES: dict[str, Rule] = {
    "NOP": _nop,
    "SEM_WAIT": _semaphore,
    "SEM_SIGNAL": _semaphore,
    "TIMESTAMP": _timestamp,
    "CONV": _conv,
    "GEMM": _gemm,
    "SDP": _sdp,
    "PDP": _pdp,
    "CDP": _cdp,
    "BDMA": _bdma,
    "RUBIK": _rubik,
}
