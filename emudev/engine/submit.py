"""Contexts, SUBMIT and JOB_STATUS: the job ioctls of the driver.

SUBMIT gathers and checks everything before it changes anything, as the kernel's
submit paths do: arrays copied (EFAULT), handles looked up (ENOENT), input points
resolved (EINVAL when never submitted), the stream copied out of its BO and
validated whole. Only then is the job queued, its fence added to the BOs'
reservations and installed in the output syncobjs.
"""

from __future__ import annotations

import errno
import struct
from typing import NamedTuple

from emudev import check, trace
from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.engine.context import Context, create_context
from emudev.engine.job import Job
from emudev.engine.validate import build_program
from emudev.gem.gem import lookup
from emudev.gem.object import GemObject
from emudev.sync.fence import DmaFence
from emudev.sync.resv import Usage
from emudev.sync.syncobj import NotSubmitted, Syncobj
from emudev.uapi import defs

_PRIORITIES = defs.ENUMS["drm_emudev_ctx_priority"]
_SUBMIT_FLAGS = defs.FLAGSETS["drm_emudev_submit_flags"]
_BO_FLAGS = defs.FLAGSETS["drm_emudev_submit_bo_flags"]
_BO_ENTRY = struct.Struct("<II")
_SYNC_ENTRY = struct.Struct("<IIQ")
MAX_BOS = 4096
MAX_SYNCS = 1024


@ioctl_handler("DRM_IOCTL_EMUDEV_CTX_CREATE")
def ctx_create(file: DrmFile, args: defs.drm_emudev_ctx_create, user: UserMemory) -> int:
    if args.priority not in _PRIORITIES.members.values():
        raise OSError(errno.EINVAL, "unknown priority")
    if args.flags or args.pad:
        raise OSError(errno.EINVAL, "flags and pad must be zero")
    if args.priority == defs.DRM_EMUDEV_PRIORITY_HIGH and not file.client.cap_sys_nice:
        raise OSError(errno.EACCES, "high priority needs CAP_SYS_NICE")
    args.ctx_id = create_context(file, args.priority).id
    return 0


@ioctl_handler("DRM_IOCTL_EMUDEV_CTX_DESTROY")
def ctx_destroy(file: DrmFile, args: defs.drm_emudev_ctx_destroy, user: UserMemory) -> int:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    context = file.contexts.remove(args.ctx_id)
    if context is None:
        raise OSError(errno.ENOENT, "no such context")
    _close(context)
    return 0


def _close(context: Context) -> None:
    context.closed = True
    context.file.device.sched.cancel(context, -errno.ESRCH)


def release_file(file: DrmFile) -> None:
    """A closed file's queued jobs are cancelled; a running one finishes on its own."""
    for context in file.contexts.drain():
        _close(context)


# -- SUBMIT -------------------------------------------------------------------------------------


class _Use(NamedTuple):
    obj: GemObject
    write: bool


def _entries(user: UserMemory, address: int, count: int, stride: int, entry: struct.Struct,
             limit: int) -> list[tuple[int, ...]]:
    """A user array read with a caller-given stride, so the entry struct can grow."""
    if count > limit:
        raise OSError(errno.EINVAL, f"more than {limit} entries")
    if not count:
        return []
    if stride < entry.size:
        raise OSError(errno.EINVAL, f"stride {stride} is below the entry size {entry.size}")
    raw = user.read(address, stride * (count - 1) + entry.size)
    if stride == entry.size:
        return list(entry.iter_unpack(raw))
    return [entry.unpack_from(raw, i * stride) for i in range(count)]


def _bos(file: DrmFile, args: defs.drm_emudev_submit, user: UserMemory) -> list[_Use]:
    uses = []
    for handle, flags in _entries(user, args.bos, args.bo_count, args.bo_stride, _BO_ENTRY, MAX_BOS):
        if not flags or _BO_FLAGS.invalid(flags):
            raise OSError(errno.EINVAL, f"BO {handle}: flags {flags:#x} are not READ and/or WRITE")
        uses.append(_Use(lookup(file, handle), bool(flags & defs.DRM_EMUDEV_BO_WRITE)))
    return uses


def _syncs(file: DrmFile, user: UserMemory, address: int, count: int, stride: int) -> list[tuple[Syncobj, int]]:
    found = []
    for handle, flags, point in _entries(user, address, count, stride, _SYNC_ENTRY, MAX_SYNCS):
        if flags:
            raise OSError(errno.EINVAL, f"syncobj {handle}: flags must be zero")
        syncobj = file.syncobjs.lookup(handle)
        if syncobj is None:
            raise OSError(errno.ENOENT, f"no syncobj {handle}")
        found.append((syncobj, point))
    return found


def _in_fences(syncs: list[tuple[Syncobj, int]]) -> list[DmaFence]:
    """drm_syncobj_find_fence() for each: a point never submitted is EINVAL, not an endless wait."""
    try:
        return [syncobj.find(point) for syncobj, point in syncs]
    except NotSubmitted:
        raise OSError(errno.EINVAL, "an in_sync point has no fence yet") from None


def _stream(file: DrmFile, args: defs.drm_emudev_submit) -> bytes:
    if not args.cmd_size or args.cmd_size > defs.DRM_EMUDEV_MAX_CMD_SIZE:
        raise OSError(errno.EINVAL, f"cmd_size must be 1 to {defs.DRM_EMUDEV_MAX_CMD_SIZE} bytes")
    if (args.cmd_offset | args.cmd_size) % defs.DRM_EMUDEV_PKT_ALIGN:
        raise OSError(errno.EINVAL, f"cmd_offset and cmd_size must be multiples of {defs.DRM_EMUDEV_PKT_ALIGN}")
    obj = lookup(file, args.cmd_handle)
    if args.cmd_offset + args.cmd_size > obj.size:
        raise OSError(errno.EINVAL, "the stream runs past the end of its BO")
    return bytes(obj.memory.view()[args.cmd_offset: args.cmd_offset + args.cmd_size])


def _implicit_fences(uses: list[_Use]) -> list[DmaFence]:
    """dma_resv_usage_rw(): a reader waits for writers, a writer for everyone."""
    return [fence for use in uses for fence in use.obj.resv.fences(Usage.READ if use.write else Usage.WRITE)]


@ioctl_handler("DRM_IOCTL_EMUDEV_SUBMIT")
def submit(file: DrmFile, args: defs.drm_emudev_submit, user: UserMemory) -> int:
    if _SUBMIT_FLAGS.invalid(args.flags):
        raise OSError(errno.EINVAL, "unknown flags")
    context = _context(file, args.ctx_id)
    if context.banned:
        raise OSError(errno.ECANCELED, "the context is banned after a job timed out")
    uses = _bos(file, args, user)
    in_syncs = _syncs(file, user, args.in_syncs, args.in_sync_count, args.sync_stride)
    out_syncs = _syncs(file, user, args.out_syncs, args.out_sync_count, args.sync_stride)
    stream = _stream(file, args)
    if (tracer := trace.active) is not None:  # emudev trace, replay and coverage see the stream read
        tracer.command_stream(stream)
    program, addressed = build_program(stream, file.vm)
    dependencies = _in_fences(in_syncs)
    if not args.flags & defs.DRM_EMUDEV_SUBMIT_NO_IMPLICIT:
        dependencies += _implicit_fences(uses)
    # The listed BOs and every BO a packet addresses stay allocated while the job may run:
    # one unmapped meanwhile faults the job (its address is gone), it never frees memory
    # an engine is still computing on.
    kept = {obj.id: obj for obj in [*(use.obj for use in uses), *addressed]}
    job = Job(context, context.next_seqno(), program, context.timeline.fence(), dependencies,
              [obj.get("job") for obj in kept.values()])
    for use in uses:
        use.obj.resv.add(job.fence, Usage.WRITE if use.write else Usage.READ)
    for syncobj, point in out_syncs:
        if point:
            syncobj.add_point(job.fence, point)
        else:
            syncobj.replace(job.fence)
    context.remember(job)
    if check.active is not None:
        check.active.job_submitted(job)
    file.device.sched.push(job)
    args.seqno = job.seqno
    return 0


def _context(file: DrmFile, ctx_id: int) -> Context:
    context = file.contexts.lookup(ctx_id)
    if context is None:
        raise OSError(errno.ENOENT, "no such context")
    return context


# -- JOB_STATUS ---------------------------------------------------------------------------------


@ioctl_handler("DRM_IOCTL_EMUDEV_JOB_STATUS")
def job_status(file: DrmFile, args: defs.drm_emudev_job_status, user: UserMemory) -> int:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    context = _context(file, args.ctx_id)
    if not 1 <= args.seqno <= context.submitted:
        raise OSError(errno.EINVAL, "no job with that seqno was submitted on the context")
    job = context.history.get(args.seqno)
    if job is None:
        raise OSError(errno.ENOENT, "the job is older than the status history")
    _report(job, args)
    return 0


def _report(job: Job, args: defs.drm_emudev_job_status) -> None:
    args.state = job.state
    args.error = job.error
    args.flags = defs.DRM_EMUDEV_JOB_CTX_BANNED if job.context.banned else 0
    if job.fault is not None:
        args.flags |= defs.DRM_EMUDEV_JOB_FAULTED
        args.fault_engine, args.fault_va, args.fault_packet = job.fault.engine, job.fault.va, job.fault.packet
    args.submit_ns, args.start_ns, args.end_ns = job.submit_ns, job.start_ns, job.end_ns
