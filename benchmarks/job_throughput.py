"""Job throughput: small jobs per second from 1, 8 and 64 client processes, and fairness between them.

An NPU serving several processes (a compositor, a camera pipeline, an inference server's workers)
is judged by how many small jobs it retires per second when they all submit at once, and by
whether each gets its share: the scheduler picks, among ready jobs of equal priority, the file
that has used the device least. Each client here is a process with its own file and context,
submitting one-packet jobs (a BDMA copy of 4 KiB between two BOs of its own, listed READ and
WRITE as a runtime would) back to back, with at most IN_FLIGHT unfinished: job i signals point i
of a timeline syncobj, and job i + IN_FLIGHT is submitted once point i has signalled.

All clients start at the same CLOCK_MONOTONIC instant and stop submitting at the end of a fixed
window; what each completed by then is the timeline's value. Jobs/s is the total over the window;
fairness is the fewest and the most jobs any one client completed. The daemon's CPU use over the
window shows whether the daemon or the clients were the limit (two CPUs are shared by all).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import statistics
import struct
import time
from dataclasses import dataclass

import numpy as np
import psutil

from benchmarks.job_latency import MOUNT_ERRORS, configs
from emudev.uapi import defs
from userspace.libaccel import READ, WRITE, Bo, CommandStream, Context, Device, Syncobj, Tensor, upload_stream

CLIENT_COUNTS = (1, 8, 64)
IN_FLIGHT = 4
WINDOW_S = 3.0
QUICK_WINDOW_S = 1.0
COPY_ELEMENTS = 1024  # fp32: 4 KiB
START_DELAY_S = 0.3
READY_BUDGET_S = 60.0
RESULT_BUDGET_S = 60.0
WAIT_TIMEOUT_S = 600.0  # one deadline for every wait of a client: a lost fence is an error, not a hang
TIMES = "\N{MULTIPLICATION SIGN}"

Connection = mp.connection.Connection


@dataclass(frozen=True)
class ClientResult:
    submitted: int
    completed: int  # by the end of the window


class Pipeline:
    """One client's jobs: SUBMIT and TIMELINE_WAIT arguments built once, the point patched in per call."""

    def __init__(self, ctx: Context, cmd: Bo, size: int, bos: list[tuple[Bo, int]], timeline: Syncobj) -> None:
        self.device = ctx.device
        self.timeline = timeline
        self._bos = ctypes.create_string_buffer(b"".join(struct.pack("<II", bo.handle, use) for bo, use in bos))
        self._out = ctypes.create_string_buffer(16)
        self._handles = (ctypes.c_uint32 * 1)(timeline.handle)
        self._points = (ctypes.c_uint64 * 1)(0)
        self.submit_args = defs.drm_emudev_submit(
            ctx_id=ctx.id, cmd_handle=cmd.handle, cmd_size=size, bo_count=len(bos), bos=ctypes.addressof(self._bos),
            out_syncs=ctypes.addressof(self._out), out_sync_count=1, bo_stride=8, sync_stride=16)
        self.wait_args = defs.drm_syncobj_timeline_wait(
            handles=ctypes.addressof(self._handles), points=ctypes.addressof(self._points), count_handles=1,
            timeout_nsec=time.monotonic_ns() + int(WAIT_TIMEOUT_S * 1e9))

    def submit(self, point: int) -> None:
        struct.pack_into("<IIQ", self._out, 0, self.timeline.handle, 0, point)
        self.device.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", self.submit_args)

    def wait(self, point: int) -> None:
        self._points[0] = point
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT", self.wait_args)


def submit_loop(jobs: Pipeline, end_ns: int) -> tuple[int, int]:
    """Submit until end_ns, never more than IN_FLIGHT unfinished; (submitted, completed at end_ns)."""
    submitted = 0
    clock = time.monotonic_ns
    while clock() < end_ns:
        if submitted >= IN_FLIGHT:
            jobs.wait(submitted + 1 - IN_FLIGHT)
        submitted += 1
        jobs.submit(submitted)
    return submitted, jobs.timeline.query()


def client(node: str, conn: Connection) -> None:
    """A client process: its own file, context, BOs, stream and timeline; reports what it completed."""
    try:
        with Device(node) as dev, Context(dev) as ctx, dev.create_bo(4096) as src, dev.create_bo(4096) as dst:
            pattern = np.arange(COPY_ELEMENTS, dtype=np.float32) + os.getpid()
            with src.cpu_access() as memory:
                memory[: pattern.nbytes] = pattern.view(np.uint8)
            copy = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY,
                                          src=Tensor.of(src, (COPY_ELEMENTS,), np.float32),
                                          dst=Tensor.of(dst, (COPY_ELEMENTS,), np.float32))
            cmd, size = upload_stream(dev, copy)
            with cmd, dev.create_syncobj() as timeline:
                jobs = Pipeline(ctx, cmd, size, [(src, READ), (dst, WRITE)], timeline)
                conn.send("ready")
                start_ns, end_ns = conn.recv()
                time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
                submitted, completed = submit_loop(jobs, end_ns)
                jobs.wait(submitted)
            with dst.cpu_access(write=False) as memory:
                if not np.array_equal(memory[: pattern.nbytes].view(np.float32), pattern):
                    raise RuntimeError("the copies did not arrive")
            conn.send(ClientResult(submitted, completed))
    except Exception as e:
        conn.send(f"client {os.getpid()}: {type(e).__name__}: {e}")
    finally:
        conn.close()


@dataclass(frozen=True)
class Round:
    clients: int
    window_s: float
    results: list[ClientResult]
    failures: list[str]
    daemon_cpu_s: float


def receive(conn: Connection, deadline: float) -> object:
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        return "no answer in time"
    try:
        return conn.recv()
    except EOFError:
        return "exited without an answer"


def one_round(node: str, daemon: psutil.Process, clients: int, window_s: float) -> Round:
    ctx = mp.get_context("fork")
    children = []
    for _ in range(clients):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=client, args=(node, child_end))
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    failures: list[str] = []
    deadline = time.monotonic() + READY_BUDGET_S
    ready = []
    for proc, conn in children:
        answer = receive(conn, deadline)
        if answer == "ready":
            ready.append((proc, conn))
        else:
            failures.append(str(answer))
            conn.close()
    start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    end_ns = start_ns + int(window_s * 1e9)
    for _, conn in ready:
        conn.send((start_ns, end_ns))
    time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
    cpu_before = sum(daemon.cpu_times()[:2])
    time.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
    cpu_s = sum(daemon.cpu_times()[:2]) - cpu_before
    results = []
    deadline = time.monotonic() + RESULT_BUDGET_S
    for _, conn in ready:
        answer = receive(conn, deadline)
        if isinstance(answer, ClientResult):
            results.append(answer)
        else:
            failures.append(str(answer))
        conn.close()
    for proc, _ in children:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
    return Round(clients, window_s, results, failures, cpu_s)


def measure(node: str, pid: int, window_s: float) -> list[Round]:
    daemon = psutil.Process(pid)
    return [one_round(node, daemon, clients, window_s) for clients in CLIENT_COUNTS]


def table(label: str, rounds: list[Round] | str, window_s: float) -> list[str]:
    lines = [f"{label}: BDMA 4 KiB copy jobs, each client a process with its own file and context, "
             f"≤ {IN_FLIGHT} in flight per client, {window_s:g} s window"]
    if isinstance(rounds, str):
        return [*lines, f"  not measured: {rounds}"]
    lines.append(f"{'clients':>8}{'jobs/s':>9}{'jobs completed per client: min':>32}{'p10':>6}{'median':>8}{'max':>6}"
                 f"{'min/max':>9}{'daemon CPU':>12}{'µs/job':>8}")
    for r in rounds:
        if not r.results:
            lines.append(f"{r.clients:>8}   no client finished")
        else:
            done = sorted(c.completed for c in r.results)
            rate = sum(done) / r.window_s
            fairness = f"{done[0] / done[-1]:9.2f}" if done[-1] else f"{'n/a':>9}"
            per_job = r.daemon_cpu_s / max(sum(done), 1) * 1e6
            lines.append(f"{r.clients:>8}{rate:>9.0f}{done[0]:>32}{done[len(done) // 10]:>6}"
                         f"{statistics.median(done):>8.0f}{done[-1]:>6}{fairness}"
                         f"{r.daemon_cpu_s / r.window_s:>12.2f}{per_job:>8.0f}")
        for failure in sorted(set(r.failures)):
            lines.append(f"  {r.failures.count(failure)} {TIMES} {failure}")
    lines.append("  daemon CPU: CPU time of the daemon process over the window, in CPUs; µs/job: that CPU "
                 "time per completed job")
    lines.append(f"  {load()} after the last round")
    return lines


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(quick: bool) -> int:
    window_s = QUICK_WINDOW_S if quick else WINDOW_S
    print(f"Linux {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs, emudev default --workers, {load()}",
          flush=True)
    tables = []
    measured = False
    for config in configs():
        try:
            with config.start() as mounted:
                rounds: list[Round] | str = measure(mounted.node, mounted.pid, window_s)
                measured = True
        except MOUNT_ERRORS as e:
            rounds = f"{type(e).__name__}: {e}"
        tables += ["", *table(config.label, rounds, window_s)]
    print("\n".join(tables))
    return 0 if measured else 1
