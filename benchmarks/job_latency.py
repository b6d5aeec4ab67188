"""Empty-job latency: SUBMIT of a job → its out-fence signalled, against the plain ioctl round trip.

The smallest unit of work a runtime sends to an NPU is a job, and the time from SUBMIT to the
out-fence is what every layer of an inference pays at least once. In emudev that path crosses
the SUBMIT ioctl (a FUSE round trip), the scheduler thread, an engine thread, the fence signal and
the deferred FUSE reply of the wait. So it is judged against one GET_PARAM round trip timed in the
same loop: submitting and waiting are two ioctls, the target allows the device one more.

Each iteration times, one after the other: GET_PARAM, a job holding one NOP, and a job holding one
BDMA fill of 4 KiB (a real engine). A job is SUBMIT with a binary out syncobj, then SYNCOBJ_WAIT
on it; JOB_STATUS afterwards gives the daemon's own timestamps (CLOCK_MONOTONIC, the clock of
every process), which split the time into stages. Both the daemon as `emudev mount` starts it and
the daemon with the checkers on (`--check`, as the test fixtures run it) are measured, each started
by emudev.testing.MountedEmudev in a fresh process.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np

from benchmarks.ioctl_latency import Latency, percentile
from emudev.testing import DaemonStartError, MountedEmudev
from emudev.uapi import defs
from userspace.libaccel import WRITE, Bo, CommandStream, Context, Device, Tensor, upload_stream

ITERATIONS = 2000
QUICK_ITERATIONS = 300
WARMUP = 50
TARGET = 3.0
FAR_FUTURE_S = 600
LABEL_WIDTH = 52
TIMES = "\N{MULTIPLICATION SIGN}"
ARROW = "\N{RIGHTWARDS ARROW}"

# -- mounting, shared with the other job benchmarks --------------------------------------------------


@dataclass(frozen=True)
class Mounted:
    """What a benchmark needs of a mount: the node to open and the daemon's pid."""

    node: str
    pid: int


@dataclass(frozen=True)
class Config:
    label: str
    start: Callable[[], AbstractContextManager[Mounted]]


@contextmanager
def plain(extra: tuple[str, ...] = ()) -> Iterator[Mounted]:
    """`emudev mount` as a user starts it: no checkers."""
    with MountedEmudev(devices=1, extra_args=extra, check=False) as mount:
        yield Mounted(mount.node(0), mount.pid)


@contextmanager
def checked(extra: tuple[str, ...] = ()) -> Iterator[Mounted]:
    """The daemon as the test fixtures run it: with the fence-order, deadlock and race checkers."""
    with MountedEmudev(devices=1, extra_args=extra) as mount:
        yield Mounted(mount.node(0), mount.pid)


def configs(extra: tuple[str, ...] = ()) -> list[Config]:
    return [Config("emudev mount", lambda: plain(extra)),
            Config("emudev mount --check (as in the tests)", lambda: checked(extra))]


MOUNT_ERRORS = (OSError, DaemonStartError)


class PreparedJob:
    """SUBMIT and SYNCOBJ_WAIT arguments built once, so that the timed loop is two bare ioctls
    (libaccel builds its arrays per call, which would be client overhead inside the timing)."""

    def __init__(self, ctx: Context, cmd: Bo, size: int, bos: list[tuple[Bo, int]]) -> None:
        self.device = ctx.device
        self.done = self.device.create_syncobj()
        self._bos = ctypes.create_string_buffer(b"".join(struct.pack("<II", bo.handle, use) for bo, use in bos)
                                                or b"\0")
        self._out = ctypes.create_string_buffer(struct.pack("<IIQ", self.done.handle, 0, 0))
        self._handles = (ctypes.c_uint32 * 1)(self.done.handle)
        self.submit_args = defs.drm_emudev_submit(
            ctx_id=ctx.id, cmd_handle=cmd.handle, cmd_size=size, bo_count=len(bos),
            bos=ctypes.addressof(self._bos), out_syncs=ctypes.addressof(self._out), out_sync_count=1,
            bo_stride=8, sync_stride=16)
        self.wait_args = defs.drm_syncobj_wait(handles=ctypes.addressof(self._handles), count_handles=1,
                                               timeout_nsec=time.monotonic_ns() + FAR_FUTURE_S * 10**9)
        self.status_args = defs.drm_emudev_job_status(ctx_id=ctx.id)

    def submit(self) -> None:
        self.device.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", self.submit_args)

    def wait(self) -> None:
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", self.wait_args)

    def status(self) -> defs.drm_emudev_job_status:
        self.status_args.seqno = self.submit_args.seqno
        self.device.ioctl("DRM_IOCTL_EMUDEV_JOB_STATUS", self.status_args)
        return self.status_args

    def close(self) -> None:
        self.done.destroy()


# -- measuring ----------------------------------------------------------------------------------------


@dataclass
class JobSamples:
    """ns per iteration: the two calls, the whole, and the daemon's stages."""

    submit_call: list[int] = field(default_factory=list)
    wait_call: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)
    to_queued: list[int] = field(default_factory=list)
    to_started: list[int] = field(default_factory=list)
    to_signalled: list[int] = field(default_factory=list)
    to_woken: list[int] = field(default_factory=list)
    failed: int = 0


def time_job(job: PreparedJob, into: JobSamples) -> None:
    clock = time.monotonic_ns
    t0 = clock()
    job.submit()
    t1 = clock()
    job.wait()
    t2 = clock()
    status = job.status()
    if status.error or status.state != defs.DRM_EMUDEV_JOB_DONE:
        into.failed += 1
        return
    into.submit_call.append(t1 - t0)
    into.wait_call.append(t2 - t1)
    into.total.append(t2 - t0)
    into.to_queued.append(status.submit_ns - t0)
    into.to_started.append(status.start_ns - status.submit_ns)
    into.to_signalled.append(status.end_ns - status.start_ns)
    into.to_woken.append(t2 - status.end_ns)


@dataclass
class Result:
    round_trip: list[int]
    jobs: dict[str, JobSamples]


def measure(node: str, iterations: int) -> Result:
    with Device(node) as dev, Context(dev) as ctx, dev.create_bo(4096) as target:
        nop_cmd, nop_size = upload_stream(dev, CommandStream().nop())
        fill = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=0x3F800000,
                                      dst=Tensor.of(target, (1024,), np.float32))
        fill_cmd, fill_size = upload_stream(dev, fill)
        jobs = {"NOP job": PreparedJob(ctx, nop_cmd, nop_size, []),
                "BDMA 4 KiB fill job": PreparedJob(ctx, fill_cmd, fill_size, [(target, WRITE)])}
        param = defs.drm_emudev_param(param=defs.DRM_EMUDEV_PARAM_DEVICE_ID)
        result = Result([], {name: JobSamples() for name in jobs})
        clock = time.monotonic_ns
        try:
            for i in range(WARMUP + iterations):
                t0 = clock()
                dev.ioctl("DRM_IOCTL_EMUDEV_GET_PARAM", param)
                t1 = clock()
                scratch = JobSamples()
                for name, job in jobs.items():
                    time_job(job, result.jobs[name] if i >= WARMUP else scratch)
                if i >= WARMUP:
                    result.round_trip.append(t1 - t0)
        finally:
            for job in jobs.values():
                job.close()
            nop_cmd.close()
            fill_cmd.close()
        with target.cpu_access(write=False) as memory:
            if not (memory[:4096].view(np.float32) == 1.0).all():
                raise RuntimeError("the BDMA fill job did not fill its BO")
    return result


# -- report -------------------------------------------------------------------------------------------


def summarise(samples: list[int]) -> Latency:
    ordered = sorted(samples)
    return Latency(percentile(ordered, 50) / 1000, percentile(ordered, 99) / 1000)


def row(label: str, samples: list[int], unit: Latency) -> str:
    lat = summarise(samples)
    return f"{label:{LABEL_WIDTH}}{lat.p50_us:9.1f}{lat.p99_us:9.1f}{lat.p50_us / unit.p50_us:13.2f}"


def table(label: str, result: Result | str, iterations: int) -> list[str]:
    lines = [f"{label}: {iterations} iterations after {WARMUP} warm-up, one client, unpinned"]
    if isinstance(result, str):
        return [*lines, f"  not measured: {result}"]
    unit = summarise(result.round_trip)
    lines += [f"{'':{LABEL_WIDTH}}{'p50 µs':>9}{'p99 µs':>9}{TIMES + ' round trip':>13}",
              row("GET_PARAM round trip (the unit)", result.round_trip, unit)]
    for name, s in result.jobs.items():
        if not s.total:
            lines.append(f"{name}: every job failed")
            continue
        lines += [row(f"{name}: SUBMIT {ARROW} fence wait returns", s.total, unit),
                  row("  SUBMIT call", s.submit_call, unit),
                  row("  SYNCOBJ_WAIT call", s.wait_call, unit),
                  row(f"  stage: SUBMIT start {ARROW} job queued", s.to_queued, unit),
                  row(f"  stage: queued {ARROW} started (scheduler)", s.to_started, unit),
                  row(f"  stage: started {ARROW} fence signalled (engine)", s.to_signalled, unit),
                  row(f"  stage: signalled {ARROW} wait returned", s.to_woken, unit)]
        if s.failed:
            lines.append(f"  {s.failed} jobs failed and were left out")
    return lines


def verdict(label: str, result: Result | str) -> str:
    name = f"target SUBMIT {ARROW} out-fence p50 ≤ {TARGET:g} round trips ({label})"
    if isinstance(result, str):
        return f"{name}: not measured"
    unit = summarise(result.round_trip).p50_us
    parts = []
    for job, s in result.jobs.items():
        if s.total:
            ratio = summarise(s.total).p50_us / unit
            parts.append(f"{job} {ratio:.2f}{TIMES} {'met' if ratio <= TARGET else 'NOT met'}")
    return f"{name}: " + "; ".join(parts)


def run(quick: bool) -> int:
    iterations = QUICK_ITERATIONS if quick else ITERATIONS
    print(f"Linux {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs, emudev default --workers, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    results: dict[str, Result | str] = {}
    for config in configs():
        try:
            with config.start() as mounted:
                results[config.label] = measure(mounted.node, iterations)
        except (*MOUNT_ERRORS, RuntimeError) as e:
            results[config.label] = f"{type(e).__name__}: {e}"
    for label, result in results.items():
        print("\n".join(["", *table(label, result, iterations)]))
    print()
    for label, result in results.items():
        print(verdict(label, result))
    return 0 if any(isinstance(r, Result) for r in results.values()) else 1
