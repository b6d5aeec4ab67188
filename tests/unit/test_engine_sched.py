"""The scheduler in-process: priorities, fairness between files, per-context order,
dependency errors, cancellation and unplug."""

from __future__ import annotations

import errno
import os
import time

import pytest

from emudev.driver.drv import create_devices
from emudev.drm.device import DeviceConfig
from emudev.drm.file import ClientIdentity
from emudev.engine import streamer
from emudev.engine.context import Context, create_context
from emudev.engine.job import Job, JobState
from emudev.engine.program import Program, Step
from emudev.sync.fence import DmaFence, new_context
from emudev.uapi import defs

ME = ClientIdentity(pid=os.getpid(), tgid=os.getpid(), uid=0, comm="pytest", cap_sys_admin=True)
EMPTY = Program(())


@pytest.fixture
def device():
    dev = create_devices(1, DeviceConfig(memory_size=1 << 20))[0]
    yield dev
    dev.unplug()


def gate() -> DmaFence:
    return DmaFence(new_context(), 1)


def job(context: Context, *dependencies: DmaFence) -> Job:
    return Job(context, context.next_seqno(), EMPTY, context.timeline.fence(), list(dependencies), [])


def timestamp_job(context: Context, va: int) -> Job:
    """A job with one packet for the CS engine: a TIMESTAMP to `va` (unmapped: the packet faults)."""
    packet = defs.drm_emudev_pkt_timestamp(engine=defs.DRM_EMUDEV_ENGINE_CS, va=va)
    program = Program((Step(0, 0, defs.DRM_EMUDEV_ENGINE_CS, "TIMESTAMP", packet, ()),))
    return Job(context, context.next_seqno(), program, context.timeline.fence(), [], [])


def push_all(device, jobs: list[Job]) -> list[Job]:
    for j in jobs:
        device.sched.push(j)
    return jobs


def wait_all(jobs: list[Job]) -> None:
    deadline = time.monotonic() + 5
    while not all(j.fence.signaled for j in jobs):
        assert time.monotonic() < deadline, "jobs never finished"
        time.sleep(0.001)


def started_order(jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: j.start_ns)


def test_higher_priority_runs_first_once_ready(device):
    file = device.open_file(ME)
    low = create_context(file, defs.DRM_EMUDEV_PRIORITY_LOW)
    high = create_context(file, defs.DRM_EMUDEV_PRIORITY_HIGH)
    g = gate()
    jobs = push_all(device, [job(low, g), job(low, g), job(high, g), job(high, g)])
    g.signal()
    wait_all(jobs)
    assert [j.context for j in started_order(jobs)] == [high, high, low, low]


def test_an_empty_job_completes_in_deferred_work_and_one_with_work_starts_at_once(device):
    """SUBMIT's reply goes out before an empty job completes; an engine job is on the ring before it."""
    deferred: list = []
    device.sched.defer = deferred.append
    context = create_context(device.open_file(ME), defs.DRM_EMUDEV_PRIORITY_NORMAL)
    empty = push_all(device, [job(context)])[0]
    assert (empty.state, empty.fence.signaled, device.sched.queued()) == (JobState.QUEUED, False, 1)
    for work in deferred:
        work()
    assert (empty.state, empty.fence.signaled, device.sched.queued()) == (JobState.DONE, True, 0)
    deferred.clear()
    engine_job = push_all(device, [timestamp_job(context, 0x1000)])[0]
    assert engine_job.start_ns and not deferred
    wait_all([engine_job])


def test_files_share_the_ring_fairly(device):
    """A file with a long queue does not starve one with a short queue."""
    greedy_file, modest_file = device.open_file(ME), device.open_file(ME)
    greedy = create_context(greedy_file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    modest = create_context(modest_file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    g = gate()
    jobs = push_all(device, [job(greedy, g) for _ in range(6)] + [job(modest, g) for _ in range(2)])
    g.signal()
    wait_all(jobs)
    order = [j.context for j in started_order(jobs)]
    assert modest in order[:2] and order[:4].count(modest) == 2


def test_a_context_runs_its_jobs_in_order_even_when_later_ones_are_ready(device):
    file = device.open_file(ME)
    ctx = create_context(file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    g = gate()
    first, second = push_all(device, [job(ctx, g), job(ctx)])
    assert not second.fence.signaled
    g.signal()
    wait_all([first, second])
    assert first.start_ns <= second.start_ns


def test_a_failed_dependency_is_carried_on_and_the_job_never_runs(device):
    file = device.open_file(ME)
    ctx = create_context(file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    g = gate()
    (j,) = push_all(device, [job(ctx, g)])
    g.signal(-errno.EIO)
    wait_all([j])
    assert j.fence.status == -errno.EIO and j.start_ns == 0


def test_cancel_and_unplug_signal_what_is_queued(device):
    file = device.open_file(ME)
    ctx = create_context(file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    other = create_context(file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    g = gate()
    cancelled = push_all(device, [job(ctx, g), job(ctx, g)])
    unplugged = push_all(device, [job(other, g)])
    device.sched.cancel(ctx, -errno.ESRCH)
    assert all(j.fence.status == -errno.ESRCH for j in cancelled)
    device.unplug()
    assert unplugged[0].fence.status == -errno.ENODEV
    late = job(other)
    device.sched.push(late)
    assert late.fence.status == -errno.ENODEV


def test_an_engine_error_outside_a_packet_fails_the_job_and_the_engine_runs_on(device, monkeypatch, caplog):
    """Whatever escapes the packet loop fails that job with EIO, and the next job still runs on the engine
    (a dead engine thread would time out every later job)."""
    file = device.open_file(ME)
    ctx = create_context(file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    real = streamer.DeviceMemory
    calls = []

    def broken_once(vm):
        calls.append(vm)
        if len(calls) == 1:
            raise RuntimeError("injected streamer bug")
        return real(vm)

    monkeypatch.setattr(streamer, "DeviceMemory", broken_once)
    first, second = push_all(device, [timestamp_job(ctx, 0x1000), timestamp_job(ctx, 0x1000)])
    wait_all([first, second])
    assert first.fence.status == -errno.EIO
    assert second.fence.status == -errno.EFAULT  # it ran, and faulted on the unmapped address
    assert "injected streamer bug" in caplog.text


def test_a_failing_completion_still_frees_the_ring(device, monkeypatch, caplog):
    """An exception while a finished job is retired must not leave the ring taken: later jobs run."""
    file = device.open_file(ME)
    ctx = create_context(file, defs.DRM_EMUDEV_PRIORITY_NORMAL)
    failing = timestamp_job(ctx, 0x1000)

    def broken_engines_left():
        raise RuntimeError("injected completion bug")

    monkeypatch.setattr(failing, "engines_left", broken_engines_left)
    later = timestamp_job(ctx, 0x2000)
    push_all(device, [failing, later])
    wait_all([failing, later])
    assert later.fence.status == -errno.EFAULT
    assert "injected completion bug" in caplog.text
