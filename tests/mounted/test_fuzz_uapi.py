"""The structure-aware uapi fuzzer (emudev.fuzz) against a mounted daemon, bounded for CI.

One daemon with two devices; hypothesis drives emudev.fuzz.machine.UapiMachine, derandomized
so CI runs are reproducible: clients in this process and in a forked helper (killed
mid-request at times) mix valid sequences with requests broken in their fields or in the
request itself, every answer checked against the kernel's errnos, the daemon alive, and
nothing left after every example. FUZZ_EXAMPLES / FUZZ_STEPS make it longer; `make fuzz`
runs the long, random version. Daemon bugs the fuzzer found are fixed; their reproducers stay below as regression tests
(a bug found later goes into emudev/fuzz/known.py with a strict-xfail reproducer).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from emudev.fuzz.machine import UapiMachine
from emudev.fuzz.session import FuzzEnv, warm_up
from emudev.testing import MountedEmudev
from emudev.uapi import defs
from userspace.libaccel import CommandStream, Context, Device, SwSyncTimeline, Tensor, upload_stream
from userspace.libaccel.bo import Bo

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 150)
STEPS = int(os.environ.get("FUZZ_STEPS") or 40)
# The daemon's RSS may grow by caches (imports, numpy, first allocations) but not with the run.
RSS_GROWTH = 64 << 20


@pytest.fixture(scope="module")
def env() -> Iterator[FuzzEnv]:
    fuzz = FuzzEnv(devices=2).start()
    try:
        warm_up(fuzz)
        yield fuzz
    finally:
        fuzz.close()


def test_the_uapi_survives_structure_aware_fuzzing(env: FuzzEnv) -> None:
    UapiMachine.env = env
    started = time.monotonic()
    try:
        run_state_machine_as_test(UapiMachine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None, deadline=None,
            suppress_health_check=list(HealthCheck), report_multiple_bugs=False))
    finally:
        UapiMachine.env = None
        if os.environ.get("FUZZ_EXAMPLES"):
            print("\n" + env.stats.summary(time.monotonic() - started))
    assert not env.stats.findings, "\n".join(map(str, env.stats.findings))
    assert set(env.stats.calls) == {spec.name for spec in defs.IOCTLS}, "some ioctls were never fuzzed"
    assert env.restarts == 0
    assert env.start_health is not None
    grown = env.health().rss - env.start_health.rss
    assert grown < RSS_GROWTH, f"the daemon's RSS grew by {grown >> 20} MiB"


# --------------------------------------------------------------------------- bugs found, not fixed yet


def _status(m: MountedEmudev) -> int | None:
    return m.proc.poll() if m.proc is not None else None


def _close(*files: Bo | Device) -> None:
    """Close what a reproducer opened (a command BO with the dma-buf libaccel keeps for it),
    on a daemon that may be gone: a file left open would keep an unplugged daemon waiting."""
    for file in files:
        with contextlib.suppress(OSError, ValueError):  # ValueError: the device fd is already closed
            file.close()


def _alive_for(m: MountedEmudev, seconds: float) -> bool:
    """Whether the daemon is still running `seconds` from now."""
    assert m.proc is not None
    deadline = time.monotonic() + seconds
    while m.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return m.proc.poll() is None


@pytest.mark.emudev(violations_expected=True)  # a SEM_WAIT nobody satisfies: the deadlock checker says so
@pytest.mark.parametrize("release", ["GEM_CLOSE", "close the file"])
def test_releasing_a_bo_under_a_blocked_sem_wait_keeps_the_daemon_alive(emudev_mount: MountedEmudev,
                                                                        release: str) -> None:
    for _ in range(3):  # the daemon died in most rounds, not in every one
        dev = Device(emudev_mount.node(0))
        bo = dev.create_bo(4096)
        ctx = Context(dev)
        stream = CommandStream().sem_wait(defs.DRM_EMUDEV_ENGINE_CS, bo.device_va + 64, 1,
                                          cond=defs.DRM_EMUDEV_SEM_EQUAL)
        cmd, size = upload_stream(dev, stream)
        ctx.submit(cmd, size)  # blocks on a word nobody writes, until the job timeout (500 ms)
        time.sleep(0.05)
        with contextlib.suppress(OSError):  # the daemon may die under the request
            bo.close() if release == "GEM_CLOSE" else dev.close()
        alive = _alive_for(emudev_mount, 1.0)  # past the job timeout
        _close(cmd, dev)
        assert alive, f"the daemon died with status {_status(emudev_mount)}"


@pytest.mark.emudev(violations_expected=True)
def test_dma_buf_sync_start_waits_for_the_fences(emudev_mount: MountedEmudev) -> None:
    """dma_buf_begin_cpu_access() waits for the implicit fences, with no timeout: the fuzzer
    leaves START out for that reason (known.BY_DESIGN); here it answers once the fence signals."""
    with Device(emudev_mount.node(0)) as dev, SwSyncTimeline(emudev_mount.mountpoint) as timeline:
        bo = dev.create_bo(4096)
        with bo.export() as dmabuf, timeline.fence(1) as pending:
            dmabuf.import_sync_file(pending, write=True)
            previous = signal.signal(signal.SIGALRM, lambda *_: timeline.inc(1))
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            started = time.monotonic()
            try:
                fcntl.ioctl(dmabuf.fd, defs.DMA_BUF_IOCTL_SYNC, defs.dma_buf_sync(flags=defs.DMA_BUF_SYNC_RW), True)
            except InterruptedError:
                fcntl.ioctl(dmabuf.fd, defs.DMA_BUF_IOCTL_SYNC, defs.dma_buf_sync(flags=defs.DMA_BUF_SYNC_RW), True)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            assert time.monotonic() - started >= 0.2, "START answered before the fence signalled"
        bo.close()


# Found by the fuzzer, fixed in f5180d1: the reproducers stay as regression tests.


@pytest.mark.parametrize("release", ["GEM_CLOSE", "close the file"])
def test_releasing_a_bo_a_running_job_did_not_list_keeps_the_daemon_alive(emudev_mount: MountedEmudev,
                                                                          release: str) -> None:
    n = 1024  # a GEMM of 1024^3 runs for tens of milliseconds
    dev = Device(emudev_mount.node(0))
    a, b, c = (dev.create_bo(n * n * 4) for _ in range(3))
    ctx = Context(dev)
    stream = CommandStream().packet("GEMM", a=Tensor.of(a, (1, 1, n, n), np.float32),
                                    b=Tensor.of(b, (1, 1, n, n), np.float32),
                                    dst=Tensor.of(c, (1, 1, n, n), np.float32))
    cmd, size = upload_stream(dev, stream)
    job = ctx.submit(cmd, size)  # valid: every address is in the file's BOs, none is listed
    deadline = time.monotonic() + 5
    while job.status().state != defs.DRM_EMUDEV_JOB_RUNNING and time.monotonic() < deadline:
        time.sleep(0.0005)
    with contextlib.suppress(OSError):  # the daemon may die under the request
        c.close() if release == "GEM_CLOSE" else dev.close()
    alive = _alive_for(emudev_mount, 0.3)
    _close(cmd, dev)
    assert alive, f"the daemon died with status {_status(emudev_mount)}"


def _change_handle_in_a_child(m: MountedEmudev, new_handle: int, bound: float) -> int | None:
    """GEM_CHANGE_HANDLE of a fresh BO to `new_handle`, from a child that opened the node itself;
    its errno (0 for success), or None when no answer came within `bound` seconds. Then the
    daemon, whose handle lock the request may hold for minutes, is killed so that nothing
    (the child's exit included) waits for it."""
    pid = os.fork()
    if pid == 0:
        try:
            with Device(m.node(0)) as dev:
                bo = dev.create_bo(4096)
                args = defs.drm_gem_change_handle(handle=bo.handle, new_handle=new_handle)
                fcntl.ioctl(dev.fd, defs.DRM_IOCTL_GEM_CHANGE_HANDLE, args, True)
                os._exit(0)
        except OSError as e:
            os._exit(e.errno or 255)
    deadline = time.monotonic() + bound
    status = None
    while status is None and time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(raw) if done else None
        time.sleep(0.01)
    assert m.proc is not None
    m.proc.kill()
    m.proc.wait()
    if status is None:
        os.waitpid(pid, 0)
    return status


def test_change_handle_to_a_number_above_int_max_answers_einval_at_once(emudev_mount: MountedEmudev) -> None:
    status = _change_handle_in_a_child(emudev_mount, 0x80000000, 2.0)
    assert status == errno.EINVAL, "no answer within 2 s" if status is None else f"answered {status}"


def test_change_handle_to_a_large_number_takes_no_time(emudev_mount: MountedEmudev) -> None:
    status = _change_handle_in_a_child(emudev_mount, 0x1000000, 0.5)
    assert status == 0, "no answer within 0.5 s" if status is None else f"answered {status}"


def _log_errors(m: MountedEmudev) -> list[str]:
    return [line for line in m.log_text().splitlines() if " ERROR " in line or line.startswith("AssertionError")]


def test_reimporting_an_export_after_its_last_handle_closed(emudev_mount: MountedEmudev) -> None:
    with Device(emudev_mount.node(0)) as dev:
        bo = dev.create_bo(4096)
        dmabuf = bo.export()
        bo.close()  # the last handle: the kernel drops the exporter's cached dma-buf reference
        args = defs.drm_prime_handle(fd=dmabuf.fd)
        dev.ioctl("DRM_IOCTL_PRIME_FD_TO_HANDLE", args)  # our own export: the same BO, a new handle
        try:
            dev.ioctl("DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=args.handle))  # the kernel: 0
        finally:
            dmabuf.close()
    deadline = time.monotonic() + 2
    while "total: 0 objects" not in emudev_mount.debug("accel0", "gem_objects") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "total: 0 objects, 0 bytes; device memory 0 " in emudev_mount.debug("accel0", "gem_objects")
    assert not _log_errors(emudev_mount)
