"""Compute through the device against the same numpy computation called directly.

The engines are numpy working in place on BO memory, so a layer run as a job should cost what the
same numpy call costs in the caller's process, plus the fixed price of a job (SUBMIT, scheduling,
the fence, the wait). For layers of a millisecond or more that price must vanish: the target is
direct / device ≥ 0.9 for every op whose direct call takes at least 1 ms.

Each row is one op with its operands already in device memory and its stream uploaded once: a sample
is SUBMIT + SYNCOBJ_WAIT of the job (fp32 GEMM of square matrices, fp32 3x3 and 1x1 convolutions of
ResNet-like layers, batch 1, NHWC, OHWI weights). Next to it, in the same loop,
emudev.engine.ops.conv.gemm / conv2d is called in this process on numpy arrays of the same shapes,
which is exactly what the engine thread calls. Two TIMESTAMP packets on the CONV engine around the
op give the time of that call inside the daemon, so the job's own cost is the rest; how long the SUBMIT
call itself took shows whether the client got a CPU while the engines' BLAS threads held them all (when
it did not, its SYNCOBJ_WAIT arrives after the job and adds a round trip). Every device
result is checked once against the direct one, so that a fast wrong answer cannot pass for a
measurement. The daemon runs without checkers and with a job timeout long enough for the largest op.

Multithreaded BLAS on a small shared VM is fragile: OpenBLAS's threads spin while they wait for
work, and when another process holds one of the CPUs a 0.3 ms GEMM can take 10 ms. Both sides
therefore run with the daemon's OPENBLAS_THREAD_TIMEOUT (`python -m benchmarks` sets it): with
OpenBLAS's default, this process's threads spun for 0.1 s after each direct call, on a CPU the next
job's GEMM needed, and a 1024³ GEMM took twice as long inside the daemon. The rows are
measured twice, with OpenBLAS's default thread count, then in a child process (and a daemon of its
own) with OPENBLAS_NUM_THREADS=1 on both sides; and the load average is printed with each table. The
verdict is on medians, the minimums show what each side does when nothing interferes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.job_latency import MOUNT_ERRORS, PreparedJob, plain
from emudev.engine.ops import conv
from emudev.uapi import defs
from userspace.libaccel import READ, WRITE, Bo, CommandStream, Context, Device, Tensor, upload_stream

GEMM_SIZES = (256, 512, 1024, 2048)
# (name, H = W, C_in, C_out, kernel)
CONV_LAYERS = (("conv 56x56x64→64 3x3", 56, 64, 64, 3), ("conv 28x28x128→128 3x3", 28, 128, 128, 3),
               ("conv 14x14x256→256 3x3", 14, 256, 256, 3), ("conv 7x7x512→512 3x3", 7, 512, 512, 3),
               ("conv 56x56x64→256 1x1", 56, 64, 256, 1), ("conv 56x56x256→64 1x1", 56, 256, 64, 1))
DAEMON_ARGS = ("--job-timeout", "60000")
MIN_SAMPLES, QUICK_MIN_SAMPLES = 9, 3
ROW_BUDGET_S, QUICK_ROW_BUDGET_S = 1.5, 0.3
TARGET = 0.9
SIGNIFICANT_MS = 1.0
LABEL_WIDTH = 24
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class Op:
    """One row: the numpy operands, the direct call, and the packet that does the same on the device."""

    name: str
    flops: float
    inputs: dict[str, np.ndarray]
    out_shape: tuple[int, ...]
    direct: Callable[[dict[str, np.ndarray], np.ndarray], None]
    packet: Callable[[dict[str, Tensor], Tensor], CommandStream]


def gemm_op(n: int, rng: np.random.Generator) -> Op:
    a = rng.standard_normal((1, 1, n, n), dtype=np.float32)
    b = rng.standard_normal((1, 1, n, n), dtype=np.float32)
    return Op(f"GEMM {n}x{n}x{n}", 2.0 * n**3, {"a": a, "b": b}, (1, 1, n, n),
              lambda x, out: conv.gemm(x["a"], x["b"], out),
              lambda t, dst: CommandStream().packet("GEMM", a=t["a"], b=t["b"], dst=dst))


def conv_op(name: str, hw: int, cin: int, cout: int, k: int, rng: np.random.Generator) -> Op:
    pad = (k // 2,) * 4
    x = rng.standard_normal((1, hw, hw, cin), dtype=np.float32)
    w = rng.standard_normal((cout, k, k, cin), dtype=np.float32) / np.float32(np.sqrt(k * k * cin))
    return Op(name, 2.0 * hw * hw * cout * k * k * cin, {"x": x, "w": w}, (1, hw, hw, cout),
              lambda v, out: conv.conv2d(v["x"], v["w"], out, pad=pad),
              lambda t, dst: CommandStream().packet("CONV", src=t["x"], weight=t["w"], dst=dst, stride=(1, 1),
                                                    dilation=(1, 1), pad=pad, groups=1))


def ops() -> list[Op]:
    rng = np.random.default_rng(7)
    return [*(gemm_op(n, rng) for n in GEMM_SIZES), *(conv_op(*layer, rng) for layer in CONV_LAYERS)]


STAGES = ("SUBMIT→queued", "queued→ring", "ring→op", "op→fence", "fence→return")
"""Where a job's cost goes, from the client's clock and the daemon's (JOB_STATUS, TIMESTAMPs), one
CLOCK_MONOTONIC: the SUBMIT's way in and its checks, the scheduler (after SUBMIT's reply), the engine
thread waking to the first packet, the end of the op to the fence, and the wait's reply reaching the client."""


@dataclass(frozen=True)
class Row:
    op: Op
    device_ms: list[float]
    submit_ms: list[float]
    kernel_ms: list[float]
    direct_ms: list[float]
    stages_us: list[tuple[float, ...]]


def upload(dev: Device, array: np.ndarray) -> tuple[Bo, Tensor]:
    bo = dev.create_bo(array.nbytes)
    with bo.cpu_access() as memory:
        memory[: array.nbytes] = array.reshape(-1).view(np.uint8)
    return bo, Tensor.of(bo, array.shape, array.dtype)


def measure_op(ctx: Context, op: Op, min_samples: int, budget_s: float) -> Row:
    dev = ctx.device
    bos, tensors = [], {}
    for name, array in op.inputs.items():
        bo, tensors[name] = upload(dev, array)
        bos.append(bo)
    dst_bo = dev.create_bo(int(np.prod(op.out_shape)) * 4)
    dst = Tensor.of(dst_bo, op.out_shape, np.float32)
    stamps = dev.create_bo(16)
    stream = CommandStream().timestamp(defs.DRM_EMUDEV_ENGINE_CONV, stamps.device_va)
    stream.packets += op.packet(tensors, dst).packets
    stream.timestamp(defs.DRM_EMUDEV_ENGINE_CONV, stamps.device_va + 8)
    cmd, size = upload_stream(dev, stream)
    job = PreparedJob(ctx, cmd, size, [*((bo, READ) for bo in bos), (dst_bo, WRITE), (stamps, WRITE)])
    out = np.empty(op.out_shape, np.float32)
    device_ms, submit_ms, kernel_ms, direct_ms, stages_us = [], [], [], [], []
    try:
        for sample in range(-1, 10**6):  # sample -1 warms both up
            t0 = time.monotonic_ns()
            job.submit()
            submitted = time.monotonic_ns()
            job.wait()
            t1 = time.monotonic_ns()
            status = job.status()
            if status.error:
                raise RuntimeError(f"{op.name}: the job failed with {status.error}")
            t2 = time.monotonic_ns()
            op.direct(op.inputs, out)
            t3 = time.monotonic_ns()
            if sample < 0:
                with dst_bo.cpu_access(write=False) as memory:
                    got = memory[: out.nbytes].view(np.float32).reshape(op.out_shape)
                    if not np.allclose(got, out, rtol=1e-4, atol=1e-3):
                        raise RuntimeError(f"{op.name}: the device's result differs from the direct call")
                continue
            with stamps.cpu_access(write=False) as memory:
                before, after = (int(v) for v in memory[:16].view(np.uint64))
            device_ms.append((t1 - t0) / 1e6)
            submit_ms.append((submitted - t0) / 1e6)
            kernel_ms.append((after - before) / 1e6)
            direct_ms.append((t3 - t2) / 1e6)
            spans = ((t0, status.submit_ns), (status.submit_ns, status.start_ns), (status.start_ns, before),
                     (after, status.end_ns), (status.end_ns, t1))
            stages_us.append(tuple((end - start) / 1e3 for start, end in spans))
            if sample + 1 >= min_samples and sum(device_ms) + sum(direct_ms) >= budget_s * 1e3:
                break
    finally:
        job.close()
        for bo in (*bos, dst_bo, stamps, cmd):
            bo.close()
    return Row(op, device_ms, submit_ms, kernel_ms, direct_ms, stages_us)


def table(rows: list[Row], notes: list[str]) -> list[str]:
    lines = [f"{'op (fp32, batch 1)':{LABEL_WIDTH}}{'GFLOP':>6}{'direct ms':>15}{'device ms':>15}{'kernel':>7}"
             f"{'kernel':>8}{'job':>7}{'SUBMIT':>8}{'direct/device':>14}{'GFLOP/s':>8}{'n':>6}",
             f"{'':{LABEL_WIDTH}}{'':>6}{'median':>8}{'min':>7}{'median':>8}{'min':>7}{'median':>7}{'/direct':>8}"
             f"{'cost':>7}{'median':>8}{'median':>7}{'min':>7}{'device':>8}"]
    for r in rows:
        direct, device, submit, kernel = (statistics.median(v)
                                          for v in (r.direct_ms, r.device_ms, r.submit_ms, r.kernel_ms))
        fastest_direct, fastest_device = min(r.direct_ms), min(r.device_ms)
        lines.append(f"{r.op.name:{LABEL_WIDTH}}{r.op.flops / 1e9:>6.2f}{direct:>8.2f}{fastest_direct:>7.2f}"
                     f"{device:>8.2f}{fastest_device:>7.2f}{kernel:>7.2f}{kernel / direct:>7.2f}{TIMES}"
                     f"{device - kernel:>7.2f}{submit:>8.2f}{direct / device:>6.2f}{TIMES}"
                     f"{fastest_direct / fastest_device:>6.2f}{TIMES}{r.op.flops / device / 1e6:>8.1f}"
                     f"{len(r.device_ms):>6}")
    lines += ["  ms. device: SUBMIT → SYNCOBJ_WAIT returns. kernel: between two TIMESTAMPs on the CONV engine around "
              "the op, i.e. the numpy call in the daemon. job cost: device - kernel (median), what the job adds "
              "(SUBMIT, scheduler and engine hand-offs, fence, wake-up). SUBMIT: until the SUBMIT call returns; "
              "close to the kernel's time, it says the client got no CPU while the engines computed, so its "
              "SYNCOBJ_WAIT came after the job had ended and cost a whole round trip more.", *notes]
    return lines


def stage_table(rows: list[Row]) -> list[str]:
    """The job cost of each op split into STAGES (medians, µs): which hand-off costs what."""
    width = max(len(stage) for stage in STAGES) + 2
    lines = ["where the job cost goes (medians, µs)",
             f"{'':{LABEL_WIDTH}}" + "".join(f"{stage:>{width}}" for stage in STAGES)]
    for r in rows:
        medians = [statistics.median(sample[i] for sample in r.stages_us) for i in range(len(STAGES))]
        lines.append(f"{r.op.name:{LABEL_WIDTH}}" + "".join(f"{m:>{width}.0f}" for m in medians))
    return [*lines, "  SUBMIT→queued: the request reaching the daemon and SUBMIT's checks; queued→ring: the "
                    "scheduler, after SUBMIT's reply; ring→op: the engine thread waking up to the first packet; "
                    "op→fence: the end of the job; fence→return: the wait's reply reaching the client."]


def verdict(rows: list[Row]) -> str:
    label = f"target direct/device ≥ {TARGET:g} (medians) for ops of ≥ {SIGNIFICANT_MS:g} ms"
    judged = [(r.op.name, statistics.median(r.direct_ms) / statistics.median(r.device_ms)) for r in rows
              if statistics.median(r.direct_ms) >= SIGNIFICANT_MS]
    if not judged:
        return f"{label}: not measured"
    missed = [f"{name} {ratio:.2f}{TIMES}" for name, ratio in judged if ratio < TARGET]
    worst = min(ratio for _, ratio in judged)
    if missed:
        return f"{label}: NOT met for {len(missed)} of {len(judged)} ({', '.join(missed)})"
    return f"{label}: met for all {len(judged)} (worst {worst:.2f}{TIMES})"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure_and_print(quick: bool, blas: str) -> int:
    """One table: every op through a fresh daemon and directly, interleaved."""
    min_samples = QUICK_MIN_SAMPLES if quick else MIN_SAMPLES
    budget = QUICK_ROW_BUDGET_S if quick else ROW_BUDGET_S
    print(f"\n{blas}; emudev mount {' '.join(DAEMON_ARGS)} (no checkers); {load()} at the start", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    try:
        with plain(DAEMON_ARGS) as mounted, Device(mounted.node) as dev, Context(dev) as ctx:
            for op in ops():
                try:
                    rows.append(measure_op(ctx, op, min_samples, budget))
                except (OSError, RuntimeError) as e:
                    notes.append(f"  {op.name}: not measured: {e}")
    except MOUNT_ERRORS as e:
        print(f"emudev did not start: {e}")
        return 1
    print("\n".join([*table(rows, notes), f"  {load()} at the end", "", *stage_table(rows), "", verdict(rows)]),
          flush=True)
    return 0 if rows else 1


def blas_settings() -> str:
    env = os.environ
    return (f"OpenBLAS threads: {env.get('OPENBLAS_NUM_THREADS', 'default')}, thread timeout "
            f"{env.get('OPENBLAS_THREAD_TIMEOUT', 'default')} (daemon and this process)")


def run(quick: bool) -> int:
    print(f"Linux {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs, numpy {np.__version__}", flush=True)
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    status = measure_and_print(quick, blas_settings())
    if threads == "1":
        return status
    child = subprocess.run([sys.executable, "-m", "benchmarks.compute", *(["--quick"] if quick else [])],
                           env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, check=False)
    return min(status, child.returncode)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one table of the compute benchmark, with this environment")
    parser.add_argument("--quick", action="store_true")
    quick_only = parser.parse_args().quick
    sys.exit(measure_and_print(quick_only, blas_settings()))
