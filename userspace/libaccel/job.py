"""Contexts, command streams and jobs: how work reaches the NPU.

A CommandStream collects packets built by the generated ISA encoders; submit() copies
them into a BO (once, so the same stream can be resubmitted) and queues a job on a
context with its BO list and syncobj points.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emudev.uapi import defs, isa

if TYPE_CHECKING:
    from userspace.libaccel.bo import Bo
    from userspace.libaccel.device import Device
    from userspace.libaccel.sync import Syncobj

READ = defs.DRM_EMUDEV_BO_READ
WRITE = defs.DRM_EMUDEV_BO_WRITE

DTYPES = {
    np.dtype(np.float32): defs.DRM_EMUDEV_DTYPE_FP32,
    np.dtype(np.float16): defs.DRM_EMUDEV_DTYPE_FP16,
    np.dtype(np.int8): defs.DRM_EMUDEV_DTYPE_INT8,
    np.dtype(np.int32): defs.DRM_EMUDEV_DTYPE_INT32,
}


@dataclass(frozen=True)
class Tensor:
    """A strided view of device memory, as a packet operand: 4 dims, byte strides."""

    va: int
    dims: tuple[int, int, int, int]
    dtype: np.dtype
    strides: tuple[int, int, int, int] | None = None
    zero_point: int = 0

    @classmethod
    def of(cls, bo: Bo, dims: Sequence[int], dtype: np.typing.DTypeLike, offset: int = 0,
           strides: Sequence[int] | None = None, zero_point: int = 0) -> Tensor:
        """A tensor `offset` bytes into `bo`; dims are padded on the left to four, strides default to packed."""
        full = (1,) * (4 - len(dims)) + tuple(dims)
        return cls(bo.device_va + offset, full, np.dtype(dtype), tuple(strides) if strides else None, zero_point)

    def packed_strides(self) -> tuple[int, int, int, int]:
        strides, step = [], self.dtype.itemsize
        for dim in reversed(self.dims):
            strides.insert(0, step)
            step *= dim
        return tuple(strides)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.dims)) * self.dtype.itemsize

    def descriptor(self) -> defs.drm_emudev_tensor:
        return defs.drm_emudev_tensor(va=self.va, dims=self.dims, strides=self.strides or self.packed_strides(),
                                      dtype=DTYPES[self.dtype], zero_point=self.zero_point)

    def view(self, dims: Sequence[int], strides: Sequence[int], offset: int = 0) -> Tensor:
        """Another window on the same memory (slices, concat targets, broadcasts)."""
        return Tensor(self.va + offset, tuple(dims), self.dtype, tuple(strides), self.zero_point)  # type: ignore


def activation(fn: int = defs.DRM_EMUDEV_ACT_NONE, alpha: float = 0.0, clip_min: float = 0.0,
               clip_max: float = 0.0) -> defs.drm_emudev_activation:
    return defs.drm_emudev_activation(fn=fn, alpha=alpha, clip_min=clip_min, clip_max=clip_max)


class CommandStream:
    """Packets for one job, in order. Each method appends one packet and returns self."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def packet(self, name: str, **fields: object) -> CommandStream:
        """Any packet of the ISA by name, fields as the uapi names them; tensors may be Tensor."""
        converted = {k: v.descriptor() if isinstance(v, Tensor) else v for k, v in fields.items()}
        self.packets.append(isa.encode(name, **converted))
        return self

    def nop(self) -> CommandStream:
        return self.packet("NOP")

    def sem_wait(self, engine: int, va: int, value: int, cond: int = defs.DRM_EMUDEV_SEM_GEQUAL) -> CommandStream:
        return self.packet("SEM_WAIT", engine=engine, cond=cond, va=va, value=value)

    def sem_signal(self, engine: int, va: int, value: int, op: int = defs.DRM_EMUDEV_SEM_SET) -> CommandStream:
        return self.packet("SEM_SIGNAL", engine=engine, op=op, va=va, value=value)

    def timestamp(self, engine: int, va: int) -> CommandStream:
        return self.packet("TIMESTAMP", engine=engine, va=va)

    def bytes(self) -> bytes:
        return b"".join(self.packets)

    def __len__(self) -> int:
        return len(self.packets)


@dataclass(frozen=True)
class JobStatus:
    state: int
    error: int
    faulted: bool
    banned: bool
    fault_engine: int
    fault_va: int
    fault_packet: int
    submit_ns: int
    start_ns: int
    end_ns: int

    @property
    def done(self) -> bool:
        return self.state == defs.DRM_EMUDEV_JOB_DONE


@dataclass(frozen=True)
class Job:
    context: Context
    seqno: int

    def status(self) -> JobStatus:
        args = defs.drm_emudev_job_status(ctx_id=self.context.id, seqno=self.seqno)
        self.context.device.ioctl("DRM_IOCTL_EMUDEV_JOB_STATUS", args)
        return JobStatus(args.state, args.error, bool(args.flags & defs.DRM_EMUDEV_JOB_FAULTED),
                         bool(args.flags & defs.DRM_EMUDEV_JOB_CTX_BANNED), args.fault_engine, args.fault_va,
                         args.fault_packet, args.submit_ns, args.start_ns, args.end_ns)


_BO_ENTRY = struct.Struct("<II")
_SYNC_ENTRY = struct.Struct("<IIQ")


class Context:
    """A queue of jobs on a device (a drm_sched entity), destroyed by close()."""

    def __init__(self, device: Device, priority: int = defs.DRM_EMUDEV_PRIORITY_NORMAL) -> None:
        args = defs.drm_emudev_ctx_create(priority=priority)
        device.ioctl("DRM_IOCTL_EMUDEV_CTX_CREATE", args)
        self.device = device
        self.id = args.ctx_id

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """CTX_DESTROY; on a device that is gone (ENODEV) the context went with it."""
        ctx_id, self.id = self.id, 0
        if not ctx_id:
            return
        try:
            self.device.ioctl("DRM_IOCTL_EMUDEV_CTX_DESTROY", defs.drm_emudev_ctx_destroy(ctx_id=ctx_id))
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise

    def submit(self, cmd: Bo, size: int, bos: Sequence[tuple[Bo, int]] = (),
               wait: Sequence[tuple[Syncobj, int]] = (), signal: Sequence[tuple[Syncobj, int]] = (),
               offset: int = 0, flags: int = 0) -> Job:
        """Queue the `size` bytes of stream at `offset` in `cmd`; `bos` pairs each BO with READ/WRITE,
        `wait` and `signal` pair syncobjs with points (0 for binary)."""
        bo_array = ctypes.create_string_buffer(b"".join(_BO_ENTRY.pack(bo.handle, use) for bo, use in bos) or b"\0")
        waits = _sync_array(wait)
        signals = _sync_array(signal)
        args = defs.drm_emudev_submit(
            ctx_id=self.id, flags=flags, cmd_handle=cmd.handle, cmd_offset=offset, cmd_size=size,
            bo_count=len(bos), bos=ctypes.addressof(bo_array), in_syncs=ctypes.addressof(waits),
            out_syncs=ctypes.addressof(signals), in_sync_count=len(wait), out_sync_count=len(signal),
            bo_stride=_BO_ENTRY.size, sync_stride=_SYNC_ENTRY.size)
        self.device.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", args)
        return Job(self, args.seqno)


def _sync_array(pairs: Sequence[tuple[Syncobj, int]]) -> ctypes.Array:
    return ctypes.create_string_buffer(b"".join(_SYNC_ENTRY.pack(s.handle, 0, point) for s, point in pairs) or b"\0")


def upload_stream(device: Device, stream: CommandStream | bytes) -> tuple[Bo, int]:
    """A BO holding the stream, ready to submit (and resubmit)."""
    data = stream.bytes() if isinstance(stream, CommandStream) else stream
    bo = device.create_bo(max(len(data), 1))
    with bo.cpu_access() as memory:
        memory[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return bo, len(data)
