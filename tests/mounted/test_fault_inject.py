"""Fault injection through debug/accelN/inject and `emudev inject`, and the deterministic
scheduling mode with `emudev explore`."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from emudev.testing import MountedEmudev
from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, SwSyncTimeline, Tensor, abs_timeout, upload_stream

F32 = np.float32
ENGINES = defs.ENUMS["drm_emudev_engine"].members


def emudev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emudev", *args], capture_output=True, text=True, timeout=60)


def inject(mount, command: str, device: int = 0) -> None:
    result = emudev("inject", mount.mountpoint, "--device", str(device), *command.split())
    assert result.returncode == 0, result.stderr


def fill(bo, count: int = 16) -> CommandStream:
    one = struct.unpack("<I", struct.pack("<f", 1.0))[0]
    return CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=one,
                                  dst=Tensor.of(bo, (count,), F32))


def submit(ctx, stream, bos=()):
    cmd, size = upload_stream(ctx.device, stream)
    done = ctx.device.create_syncobj()
    job = ctx.submit(cmd, size, bos=list(bos), signal=[(done, 0)])
    cmd.close()
    return job, done


def test_allocations_fail_on_demand(emudev_mount):
    inject(emudev_mount, "alloc_fail 2")
    assert "alloc_fail: 2" in emudev_mount.debug("accel0", "inject")
    with Device(emudev_mount.node(0)) as dev:
        for _ in range(2):
            with pytest.raises(OSError) as e:
                dev.create_bo(4096)
            assert e.value.errno == errno.ENOMEM
        dev.create_bo(4096).close()


def test_bad_commands_are_refused_with_a_message(emudev_mount):
    result = emudev("inject", emudev_mount.mountpoint, "hang", "gpu")
    assert result.returncode != 0 and "unknown engine 'gpu'" in result.stderr
    fd = os.open(os.path.join(emudev_mount.mountpoint, "debug", "accel0", "inject"), os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"explode\n")
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)


@pytest.mark.emudev(args=("--job-timeout", "200"))
def test_a_hung_engine_times_out_and_resets(emudev_mount):
    inject(emudev_mount, "hang bdma")
    with Device(emudev_mount.node(0)) as dev, Context(dev) as victim, Context(dev) as bystander, \
            dev.create_bo(4096) as a, dev.create_bo(4096) as b:
        hung, hung_done = submit(victim, fill(a), [(a, WRITE)])
        after, after_done = submit(bystander, fill(b), [(b, WRITE)])
        hung_done.wait(timeout_ns=abs_timeout(5))
        after_done.wait(timeout_ns=abs_timeout(5))
        assert hung.status().error == -errno.ETIME and hung.status().banned
        assert after.status().error == 0  # the hang was reset with the job


def test_a_slow_engine_and_late_signals(emudev_mount):
    inject(emudev_mount, "slow bdma 100")
    inject(emudev_mount, "delay_signal 100")
    with Device(emudev_mount.node(0)) as dev, Context(dev) as ctx, dev.create_bo(4096) as bo:
        start = time.monotonic()
        job, done = submit(ctx, fill(bo), [(bo, WRITE)])
        done.wait(timeout_ns=abs_timeout(5))
        status = job.status()
        assert status.end_ns - status.start_ns >= 200_000_000  # 100 ms slower, then 100 ms before the signal
        assert time.monotonic() - start >= 0.2
    inject(emudev_mount, "clear")
    assert "slow: -" in emudev_mount.debug("accel0", "inject")


@pytest.mark.emudev(devices=2)
def test_dropping_one_device(emudev_mount):
    m = emudev_mount
    with Device(m.node(0)) as survivor, Device(m.node(1)) as dropped, Context(dropped) as ctx, \
            SwSyncTimeline(m.mountpoint) as gate:
        bo = dropped.create_bo(4096)
        mapping = bo.map()
        mapping[:4] = 7
        blocker = dropped.create_syncobj()
        with gate.fence(1) as fence:
            blocker.import_sync_file(fence)
        cmd, size = upload_stream(dropped, CommandStream().nop())
        done = dropped.create_syncobj()
        ctx.submit(cmd, size, wait=[(blocker, 0)], signal=[(done, 0)])
        cmd.close()
        with done.export_sync_file() as pending:
            inject(m, "unplug", device=1)
            assert pending.wait(5.0) and pending.info()[1] == -errno.ENODEV
        assert (mapping[:4] == 7).all()  # an existing mapping keeps working
        mapping[4:8] = 9
        assert (mapping[4:8] == 9).all()
        del mapping  # before any pytest.raises, whose traceback would keep the frame's locals
        bo.close()
        with pytest.raises(OSError) as e:
            dropped.get_param(defs.DRM_EMUDEV_PARAM_DEVICE_ID)
        assert e.value.errno == errno.ENODEV
        with pytest.raises(OSError) as e:
            Device(m.node(1))
        assert e.value.errno == errno.ENXIO
        assert survivor.get_param(defs.DRM_EMUDEV_PARAM_DEVICE_INDEX) == 0


def packet_order(seed: int) -> list[int]:
    """Which engine ran first, second, ... in a job that gives four engines a TIMESTAMP each."""
    engines = [ENGINES[f"DRM_EMUDEV_ENGINE_{name}"] for name in ("CONV", "SDP", "BDMA", "RUBIK")]
    with MountedEmudev(extra_args=("--sched-seed", str(seed))) as m, Device(m.node(0)) as dev, \
            Context(dev) as ctx, dev.create_bo(4096) as stamps:
        stream = CommandStream()
        for round_ in range(3):
            for slot, engine in enumerate(engines):
                stream.timestamp(engine, stamps.device_va + 8 * (4 * round_ + slot))
        _, done = submit(ctx, stream)
        done.wait(timeout_ns=abs_timeout(5))
        with stamps.cpu_access(write=False) as memory:
            times = memory[: 8 * 12].view(np.uint64).copy()
        del memory  # the mapping must go before the daemon can finish
        return [int(i) for i in np.argsort(times, kind="stable")]


def test_a_seed_replays_the_same_interleaving():
    first = packet_order(11)
    assert packet_order(11) == first
    assert any(packet_order(seed) != first for seed in (12, 13, 14))


def test_explore_runs_a_command_per_seed(tmp_path):
    ok = emudev("explore", "--seeds", "2", "--", sys.executable, "-c",
                "import os, sys; sys.exit(0 if os.path.exists(os.environ['EMUDEV_MOUNT'] + '/accel/accel0') else 3)")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 of 2 seeds passed" in ok.stdout
    bad = emudev("explore", "--seeds", "2", "--first-seed", "5", "--", sys.executable, "-c",
                 "import os, sys; sys.exit(int(os.environ['EMUDEV_SCHED_SEED']) == 6)")
    assert bad.returncode == 1 and "failing seeds: 6" in bad.stdout


