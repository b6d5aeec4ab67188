"""Job submission through a mounted node: contexts, SUBMIT validation, execution on the
engines, semaphores, faults, timeouts and bans, cancellation, priorities, and a chain of
jobs across contexts and devices ordered only by syncobjs and dma-buf implicit fences.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import time

import numpy as np
import pytest

from emudev.uapi import defs, isa
from userspace.libaccel import (
    DEVICE_READ_ONLY,
    MAPPABLE,
    READ,
    WRITE,
    CommandStream,
    Context,
    Device,
    SwSyncTimeline,
    Tensor,
    abs_timeout,
    upload_stream,
)
from userspace.libaccel.sync import SyncFile

F32 = np.float32
CS, CONV, SDP, BDMA, RUBIK = (defs.DRM_EMUDEV_ENGINE_CS, defs.DRM_EMUDEV_ENGINE_CONV, defs.DRM_EMUDEV_ENGINE_SDP,
                              defs.DRM_EMUDEV_ENGINE_BDMA, defs.DRM_EMUDEV_ENGINE_RUBIK)


@pytest.fixture(scope="module")
def mount(emudev_shared_mount):
    return emudev_shared_mount


def errno_of(fn) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno


def fill(value: float, dst: Tensor) -> CommandStream:
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=bits, dst=dst)


def run(ctx: Context, stream: CommandStream, bos, wait=(), signal_points=(), flags: int = 0):
    """Submit `stream` and return (job, syncobj that signals when it is done)."""
    device = ctx.device
    cmd, size = upload_stream(device, stream)
    done = device.create_syncobj()
    job = ctx.submit(cmd, size, bos=bos, wait=wait, signal=[(done, 0), *signal_points], flags=flags)
    cmd.close()
    return job, done


def floats(bo, count: int, offset: int = 0) -> np.ndarray:
    with bo.cpu_access(write=False) as memory:
        return memory[offset: offset + 4 * count].view(F32).copy()


def sync_file_status(syncobj) -> int:
    with syncobj.export_sync_file() as sync_file:
        return sync_file.info()[1]


# -- the basics ------------------------------------------------------------------------------------


def test_params_describe_the_npu(dev):
    engines = dev.get_param(defs.DRM_EMUDEV_PARAM_ENGINES)
    assert engines == sum(1 << e for e in defs.ENUMS["drm_emudev_engine"].members.values())
    assert dev.get_param(defs.DRM_EMUDEV_PARAM_DTYPES) & (1 << defs.DRM_EMUDEV_DTYPE_INT8)
    assert dev.get_param(defs.DRM_EMUDEV_PARAM_ISA_VERSION) == defs.DRM_EMUDEV_ISA_VERSION
    assert dev.get_param(defs.DRM_EMUDEV_PARAM_VA_START) < dev.get_param(defs.DRM_EMUDEV_PARAM_VA_END)
    assert dev.get_param(defs.DRM_EMUDEV_PARAM_JOB_TIMEOUT_MS) == 500


def test_contexts_are_per_file_and_checked(dev, mount):
    with Context(dev) as a, Context(dev) as b:
        assert {a.id, b.id} == {1, 2}
        with Device(mount.node(0)) as other:
            assert errno_of(lambda: other.ioctl("DRM_IOCTL_EMUDEV_CTX_DESTROY",
                                                defs.drm_emudev_ctx_destroy(ctx_id=a.id))) == errno.ENOENT
    assert errno_of(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_CTX_CREATE", defs.drm_emudev_ctx_create(priority=7))) \
        == errno.EINVAL
    assert errno_of(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_CTX_CREATE", defs.drm_emudev_ctx_create(flags=1))) \
        == errno.EINVAL
    assert errno_of(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_CTX_DESTROY", defs.drm_emudev_ctx_destroy(ctx_id=1, pad=1))) \
        == errno.EINVAL


def test_a_job_fills_copies_and_reports(dev):
    with Context(dev) as ctx, dev.create_bo(4096) as a, dev.create_bo(4096) as b:
        src = Tensor.of(a, (2, 3, 5, 7), F32)
        dst = Tensor.of(b, (2, 3, 5, 7), F32)
        stream = fill(1.5, src).packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=src, dst=dst)
        job, done = run(ctx, stream, [(a, WRITE), (b, WRITE)])
        done.wait(timeout_ns=abs_timeout(5))
        assert (floats(b, 210) == 1.5).all()
        assert floats(b, 1, 210 * 4)[0] == 0  # nothing past the tensor
        status = job.status()
        assert status.done and status.error == 0 and not status.faulted
        assert status.submit_ns <= status.start_ns <= status.end_ns


def test_engines_run_concurrently_ordered_by_semaphores(dev):
    """BDMA fills, then signals; RUBIK waits for that before transposing what BDMA wrote."""
    with Context(dev) as ctx, dev.create_bo(4096) as a, dev.create_bo(4096) as b, dev.create_bo(4096) as sem:
        src = Tensor.of(a, (1, 4, 6, 8), F32)
        dst = Tensor.of(b, (1, 8, 6, 4), F32)
        stream = (CommandStream()
                  .sem_wait(RUBIK, sem.device_va, 1)
                  .packet("RUBIK", op=defs.DRM_EMUDEV_RUBIK_TRANSPOSE, src=src, dst=dst, perm=(0, 3, 2, 1)))
        stream.packets[:0] = fill(2.0, src).sem_signal(BDMA, sem.device_va, 1).packets
        job, done = run(ctx, stream, [(a, WRITE), (b, WRITE), (sem, WRITE)])
        done.wait(timeout_ns=abs_timeout(5))
        assert job.status().error == 0
        assert (floats(b, 192) == 2.0).all()


def test_timestamps_follow_their_engine(dev):
    with Context(dev) as ctx, dev.create_bo(4096) as t:
        stream = CommandStream().timestamp(CS, t.device_va).timestamp(BDMA, t.device_va + 8)
        before = time.monotonic_ns()
        _, done = run(ctx, stream, [(t, WRITE)])
        done.wait(timeout_ns=abs_timeout(5))
        with t.cpu_access(write=False) as memory:
            stamps = memory[:16].view(np.uint64)
            assert before <= stamps[0] <= time.monotonic_ns() and before <= stamps[1] <= time.monotonic_ns()


# -- validation: nothing queued, nothing changed ----------------------------------------------------


def submit_raw(dev, ctx, stream: bytes, bos=(), **overrides) -> int:
    cmd, size = upload_stream(dev, stream)
    try:
        fields = dict(cmd=cmd, size=size, bos=bos)
        fields.update(overrides)
        return errno_of(lambda: ctx.submit(**fields))
    finally:
        cmd.close()


@pytest.fixture
def ctx(dev):
    with Context(dev) as c:
        yield c


def test_malformed_streams_are_einval(dev, ctx):
    nop = isa.encode("NOP")
    unknown = bytes([0x7F, 0, 2, 0, 0, 0, 0, 0])
    assert submit_raw(dev, ctx, unknown) == errno.EINVAL
    short = bytearray(isa.encode("TIMESTAMP", engine=CS, va=0))
    short[2] = 2  # dwords says 2, the packet is longer
    assert submit_raw(dev, ctx, bytes(short)) == errno.EINVAL
    flagged = bytearray(nop)
    flagged[4] = 1
    assert submit_raw(dev, ctx, bytes(flagged)) == errno.EINVAL
    with dev.create_bo(4096) as bo:
        bad_dtype = defs.drm_emudev_tensor(va=bo.device_va, dims=(1, 1, 1, 4), strides=(16, 16, 16, 4), dtype=9)
        assert submit_raw(dev, ctx, isa.encode("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, dst=bad_dtype)) == errno.EINVAL
        zero_dim = Tensor.of(bo, (1, 1, 0, 4), F32)
        assert submit_raw(dev, ctx, fill(1, zero_dim).bytes()) == errno.EINVAL
    cmd, size = upload_stream(dev, nop)
    with cmd:
        for fields in (dict(offset=4), dict(size=0), dict(size=size + 8), dict(flags=0x80)):
            args = {"cmd": cmd, "size": size, **fields}
            assert errno_of(lambda args=args: ctx.submit(**args)) == errno.EINVAL, fields
        ctx.submit(cmd, size)  # the same stream is fine


def test_addresses_outside_any_bo_are_efault(dev, ctx):
    with dev.create_bo(4096) as bo:
        past_the_end = Tensor.of(bo, (1, 1, 1, 1025), F32)
        assert submit_raw(dev, ctx, fill(1, past_the_end).bytes(), [(bo, WRITE)]) == errno.EFAULT
        nowhere = Tensor(va=1 << 46, dims=(1, 1, 1, 4), dtype=np.dtype(F32))
        assert submit_raw(dev, ctx, fill(1, nowhere).bytes()) == errno.EFAULT
        semaphore = CommandStream().sem_signal(CS, 12, 1).bytes()
        assert submit_raw(dev, ctx, semaphore) == errno.EFAULT


def test_writing_a_device_read_only_bo_is_einval(dev, ctx):
    with dev.create_bo(4096, MAPPABLE | DEVICE_READ_ONLY) as ro, dev.create_bo(4096) as rw:
        assert submit_raw(dev, ctx, fill(1, Tensor.of(ro, (4,), F32)).bytes(), [(ro, READ)]) == errno.EINVAL
        copy = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=Tensor.of(ro, (4,), F32),
                                      dst=Tensor.of(rw, (4,), F32))
        _, done = run(ctx, copy, [(ro, READ), (rw, WRITE)])  # reading it is fine
        done.wait(timeout_ns=abs_timeout(5))


def test_handles_and_arrays_are_checked(dev, ctx):
    nop = CommandStream().nop()
    cmd, size = upload_stream(dev, nop)
    with cmd, dev.create_bo(4096) as bo:
        sync = dev.create_syncobj()
        assert errno_of(lambda: ctx.submit(cmd, size, bos=[(bo, 0)])) == errno.EINVAL
        assert errno_of(lambda: ctx.submit(cmd, size, bos=[(bo, 4)])) == errno.EINVAL
        with dev.create_bo(4096) as gone:
            pass
        assert errno_of(lambda: ctx.submit(cmd, size, bos=[(gone, READ)])) == errno.ENOENT
        # waiting for a point nothing was ever submitted for fails now instead of hanging
        assert errno_of(lambda: ctx.submit(cmd, size, wait=[(sync, 0)])) == errno.EINVAL
        assert errno_of(lambda: ctx.submit(cmd, size, wait=[(sync, 3)])) == errno.EINVAL
        bogus = defs.drm_emudev_submit(ctx_id=ctx.id, cmd_handle=cmd.handle, cmd_size=size, bo_count=1,
                                       bos=8, bo_stride=8)
        assert errno_of(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", bogus)) == errno.EFAULT
        narrow = defs.drm_emudev_submit(ctx_id=ctx.id, cmd_handle=cmd.handle, cmd_size=size, bo_count=1,
                                        bos=8, bo_stride=4)
        assert errno_of(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", narrow)) == errno.EINVAL
        unknown_ctx = defs.drm_emudev_submit(ctx_id=99, cmd_handle=cmd.handle, cmd_size=size)
        assert errno_of(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", unknown_ctx)) == errno.ENOENT
        # none of it changed the out syncobj or queued a job
        assert errno_of(lambda: ctx.submit(cmd, size, wait=[(sync, 0)], signal=[(sync, 0)])) == errno.EINVAL
        assert errno_of(lambda: sync.wait(timeout_ns=0)) == errno.EINVAL
        assert errno_of(lambda: ctx.device.ioctl("DRM_IOCTL_EMUDEV_JOB_STATUS", defs.drm_emudev_job_status(
            ctx_id=ctx.id, seqno=1))) == errno.EINVAL


def test_timeline_points_chain_jobs(dev, ctx):
    timeline = dev.create_syncobj()
    with dev.create_bo(4096) as bo:
        t = Tensor.of(bo, (4,), F32)
        cmd, size = upload_stream(dev, fill(3.0, t))
        with cmd:
            ctx.submit(cmd, size, bos=[(bo, WRITE)], signal=[(timeline, 1)])
            ctx.submit(cmd, size, bos=[(bo, WRITE)], wait=[(timeline, 1)], signal=[(timeline, 2)])
        timeline.wait(point=2, timeout_ns=abs_timeout(5))
        assert timeline.query() == 2


# -- execution errors ------------------------------------------------------------------------------


def test_a_fault_stops_the_job_and_is_reported(dev, ctx, mount):
    with SwSyncTimeline(mount.mountpoint) as gate:
        blocker = dev.create_syncobj()
        with gate.fence(1) as fence:
            blocker.import_sync_file(fence)
        victim = dev.create_bo(8192)
        target = Tensor.of(victim, (16,), F32)
        job, done = run(ctx, fill(1.0, target), bos=[], wait=[(blocker, 0)])
        va = victim.device_va
        victim.close()  # its address is unmapped before the job runs
        gate.inc()
        done.wait(timeout_ns=abs_timeout(5))
    status = job.status()
    assert status.done and status.faulted and status.error == -errno.EFAULT
    assert status.fault_engine == BDMA and status.fault_packet == 0 and status.fault_va == va
    assert sync_file_status(done) == -errno.EFAULT
    faults = mount.debug("accel0", "faults")
    assert f"{va:#x}" in faults and "not mapped" in faults


@pytest.mark.emudev(args=("--job-timeout", "200"), violations_expected=True)
def test_a_hung_job_times_out_and_bans_its_context(emudev_mount):
    with Device(emudev_mount.node(0)) as dev, Context(dev) as guilty, Context(dev) as innocent, \
            dev.create_bo(4096) as sem, dev.create_bo(4096) as out:
        hang, hung = run(guilty, CommandStream().sem_wait(CS, sem.device_va, 1), [(sem, READ)])
        queued, queued_done = run(guilty, CommandStream().nop(), [])
        other, other_done = run(innocent, fill(5.0, Tensor.of(out, (4,), F32)), [(out, WRITE)])
        hung.wait(timeout_ns=abs_timeout(5))
        assert hang.status().error == -errno.ETIME and hang.status().banned
        queued_done.wait(timeout_ns=abs_timeout(5))
        assert queued.status().error == -errno.ECANCELED
        other_done.wait(timeout_ns=abs_timeout(5))
        assert other.status().error == 0 and (floats(out, 4) == 5.0).all()
        cmd, size = upload_stream(dev, CommandStream().nop())
        with cmd:
            assert errno_of(lambda: guilty.submit(cmd, size)) == errno.ECANCELED
            innocent.submit(cmd, size)
        assert "timed out" in emudev_mount.log_text()
        assert "[deadlock] packet 0 (SEM_WAIT" in emudev_mount.violations()


def test_a_failed_dependency_fails_the_job_with_its_error(dev, ctx, mount):
    with SwSyncTimeline(mount.mountpoint) as gate:
        first = dev.create_syncobj()
        with gate.fence(1) as fence:
            first.import_sync_file(fence)
        victim = dev.create_bo(4096)
        _, faulted = run(ctx, fill(1.0, Tensor.of(victim, (4,), F32)), [], wait=[(first, 0)])
        victim.close()
        with dev.create_bo(4096) as bo:
            dependent, dependent_done = run(ctx, fill(2.0, Tensor.of(bo, (4,), F32)), [(bo, WRITE)],
                                            wait=[(faulted, 0)])
            gate.inc()
            dependent_done.wait(timeout_ns=abs_timeout(5))
            assert dependent.status().error == -errno.EFAULT
            assert dependent.status().start_ns == 0
            assert (floats(bo, 4) == 0).all()


# -- scheduling --------------------------------------------------------------------------------------


def test_priority_wins_once_the_ring_frees(dev, mount):
    """A job holds the ring on a semaphore; a LOW and then a HIGH job queue behind it."""
    with Context(dev, defs.DRM_EMUDEV_PRIORITY_NORMAL) as busy, Context(dev, defs.DRM_EMUDEV_PRIORITY_LOW) as low, \
            Context(dev, defs.DRM_EMUDEV_PRIORITY_HIGH) as high, dev.create_bo(4096) as sem:
        _, held = run(busy, CommandStream().sem_wait(CS, sem.device_va, 1), [])
        time.sleep(0.05)
        low_job, low_done = run(low, CommandStream().nop(), [])
        high_job, high_done = run(high, CommandStream().nop(), [])
        sem.map()[:4] = np.frombuffer(struct.pack("<I", 1), dtype=np.uint8)
        sem.fini()
        for done in (held, low_done, high_done):
            done.wait(timeout_ns=abs_timeout(5))
        assert high_job.status().start_ns < low_job.status().start_ns


def test_closing_a_file_cancels_its_queued_jobs(mount):
    """A client killed with a job queued: the job's fence signals ESRCH, its BO is freed."""
    with SwSyncTimeline(mount.mountpoint) as gate:
        parent_end, child_end = socket.socketpair()
        child = os.fork()
        if child == 0:
            try:
                parent_end.close()
                with Device(mount.node(0)) as dev, Context(dev) as ctx, dev.create_bo(1 << 20) as bo:
                    blocker = dev.create_syncobj()
                    with gate.fence(1) as fence:
                        blocker.import_sync_file(fence)
                    _, done = run(ctx, fill(1.0, Tensor.of(bo, (16,), F32)), [(bo, WRITE)], wait=[(blocker, 0)])
                    with done.export_sync_file() as sync_file:
                        socket.send_fds(child_end, [b"queued"], [sync_file.fd])
                        time.sleep(30)
            finally:
                os._exit(0)
        child_end.close()
        message, fds, _, _ = socket.recv_fds(parent_end, 16, 1)
        assert message == b"queued"
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        parent_end.close()
        with SyncFile(fds[0]) as sync_file:
            assert sync_file.wait(5.0)
            assert sync_file.info()[1] == -errno.ESRCH
        deadline = time.monotonic() + 5
        while "1048576" in mount.debug("accel0", "gem_objects"):
            assert time.monotonic() < deadline, "the cancelled job's BO was never freed"
            time.sleep(0.01)


# -- across contexts and devices ------------------------------------------------------------------------


def test_a_chain_across_contexts_and_devices(mount):
    """accel0 writes a BO that accel1 imports; accel1's job reads it, ordered by the dma-buf's
    implicit fences only, then a job on another accel0 context follows through a syncobj."""
    with Device(mount.node(0)) as dev0, Device(mount.node(1)) as dev1, SwSyncTimeline(mount.mountpoint) as gate, \
            Context(dev0) as producer, Context(dev1) as consumer, Context(dev0) as finisher:
        shared = dev0.create_bo(4096)
        with shared.export() as dmabuf:
            imported = dev1.import_dmabuf(dmabuf.fd)
        out1 = dev1.create_bo(4096)
        final = dev0.create_bo(4096)
        blocker = dev0.create_syncobj()
        with gate.fence(1) as fence:
            blocker.import_sync_file(fence)
        produce, _ = run(producer, fill(7.0, Tensor.of(shared, (64,), F32)), [(shared, WRITE)], wait=[(blocker, 0)])
        copy = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=Tensor.of(imported, (64,), F32),
                                      dst=Tensor.of(out1, (64,), F32))
        consume, consumed = run(consumer, copy, [(imported, READ), (out1, WRITE)])
        with consumed.export_sync_file() as sync_file:
            handoff = dev0.create_syncobj()
            handoff.import_sync_file(sync_file)
        finish, finished = run(finisher, fill(1.0, Tensor.of(final, (4,), F32)), [(final, WRITE)],
                               wait=[(handoff, 0)])
        time.sleep(0.05)
        assert consume.status().state == defs.DRM_EMUDEV_JOB_QUEUED
        assert finish.status().state == defs.DRM_EMUDEV_JOB_QUEUED
        gate.inc()
        finished.wait(timeout_ns=abs_timeout(5))
        assert (floats(out1, 64) == 7.0).all()
        assert produce.status().end_ns <= consume.status().start_ns
        assert consume.status().end_ns <= finish.status().start_ns
        for bo in (imported, out1, shared, final):
            bo.close()


def test_unplug_signals_pending_fences_enodev(emudev_mount):
    mount = emudev_mount
    with Device(mount.node(0)) as dev, Context(dev) as ctx, SwSyncTimeline(mount.mountpoint) as gate:
        blocker = dev.create_syncobj()
        with gate.fence(1) as fence:
            blocker.import_sync_file(fence)
        _, done = run(ctx, CommandStream().nop(), [], wait=[(blocker, 0)])
        with done.export_sync_file() as sync_file:
            os.kill(mount.pid, signal.SIGTERM)
            assert sync_file.wait(5.0)
            assert sync_file.info()[1] == -errno.ENODEV
        assert errno_of(lambda: dev.get_param(defs.DRM_EMUDEV_PARAM_DEVICE_ID)) == errno.ENODEV
