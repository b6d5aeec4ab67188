"""Fence wake-up: how soon a process blocked in a syncobj wait returns once another process signals.

A driver's fences are only as good as their wake-up: a GPU/NPU runtime chains jobs across
processes through shared syncobjs, and every hop costs one wake-up. In the kernel that is a
wake_up() of a sleeping task; in emudev it is a deferred FUSE reply written by whichever daemon
thread handles the SIGNAL. So the wake-up is judged against the plain ioctl round trip (GET_CAP)
timed by the same two processes in the same run: a wake-up costs one reply, it should cost about
one round trip, never many.

The second table parks 1,000 waits from 64 processes on one syncobj and signals it once. It checks
that everybody wakes, that the last waiters are not starved behind the first (p99/p50 of the
wake-up delay), and that parked waits cost the daemon no thread: each one holds a FUSE request,
never a daemon thread, so the daemon's thread count must not follow the number of waiters.

Every waiter waits with WAIT_FOR_SUBMIT on a reset (fenceless) syncobj, the Vulkan-semaphore
pattern; such a wait is a change callback on the syncobj, which is what the waiters column of
debug/accel0/fences counts, so the signaller can see that a waiter is parked before it signals.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

import psutil

from benchmarks.ioctl_latency import Latency, percentile, summarise
from emudev.testing import DaemonStartError, MountedEmudev
from emudev.uapi import defs
from userspace.libaccel import Device, Syncobj, abs_timeout
from userspace.libaccel.sync import WAIT_FOR_SUBMIT

ITERATIONS = 500
QUICK_ITERATIONS = 100
WARMUP = 20
WAITERS = 1000
PROCESSES = 64
WAKE_TARGET = 2.0
SPREAD_TARGET = 5.0
# Budgets turn a lost wake-up or a stuck child into a reported failure instead of a hang.
WAIT_TIMEOUT_S = 60.0
BLOCK_BUDGET_S = 30.0
MESSAGE_BUDGET_S = 10.0
POLL_INTERVAL_S = 0.0005
GET_CAP = "DRM_IOCTL_GET_CAP"
SIGNAL = "DRM_IOCTL_SYNCOBJ_SIGNAL"
LABEL_WIDTH = 40
TIMES = "\N{MULTIPLICATION SIGN}"

Connection = mp.connection.Connection
T = TypeVar("T")


class MeasureError(RuntimeError):
    """A measurement that did not produce numbers; the message is printed instead of the table."""


@dataclass(frozen=True)
class PingPong:
    """Table 1's samples in ns, warm-up dropped: both processes' round trips, the signal call, the wake-ups."""

    round_trip_signaller: list[int]
    round_trip_waiter: list[int]
    signal_call: list[int]
    wake_up: list[int]


@dataclass(frozen=True)
class ThreadCounts:
    """The daemon's threads at the four moments where a thread per wait, or per reply, would show."""

    before: int
    parked: int
    signalled: int
    after: int


@dataclass(frozen=True)
class FanOut:
    """Table 2: who was parked when the signal came, who woke after it (delays in ns), who did not."""

    parked: int
    park_s: float
    delays_ns: list[int]
    failures: list[str]
    signal_ns: int
    threads: ThreadCounts


@dataclass(frozen=True)
class Inherited:
    """What every fan-out child gets across fork: the node, the opaque syncobj fd and the one
    deadline of all waits."""

    node: str
    syncobj_fd: int
    timeout_ns: int


Child = tuple[mp.process.BaseProcess, Connection]


# shared

def prepared_signal(syncobj: Syncobj) -> tuple[defs.drm_syncobj_array, ctypes.Array]:
    """SYNCOBJ_SIGNAL arguments built in advance (libaccel builds them per call, inside the timing);
    the handle array is returned too because the struct only holds its address."""
    handles = (ctypes.c_uint32 * 1)(syncobj.handle)
    return defs.drm_syncobj_array(handles=ctypes.addressof(handles), count_handles=1), handles


def timed_ioctl(dev: Device, name: str, args: defs.UapiStruct) -> tuple[int, int]:
    """CLOCK_MONOTONIC just before and just after one ioctl: the clock every process shares."""
    start = time.monotonic_ns()
    dev.ioctl(name, args)
    return start, time.monotonic_ns()


def round_trip(dev: Device, args: defs.drm_get_cap) -> int:
    start, end = timed_ioctl(dev, GET_CAP, args)
    return end - start


def get_cap_args() -> defs.drm_get_cap:
    return defs.drm_get_cap(capability=defs.DRM_CAP_TIMESTAMP_MONOTONIC)


def parked_waits(mount: MountedEmudev) -> int:
    """Waits parked on fenceless syncobjs; a syncobj imported by several files is listed once per
    file with the same id and waiters, so it is counted once."""
    per_syncobj: dict[str, int] = {}
    for line in mount.debug("accel0", "fences").splitlines()[1:]:
        fields = line.split()
        per_syncobj[fields[2]] = int(fields[5])
    return sum(per_syncobj.values())


def wait_until_parked(mount: MountedEmudev, count: int) -> int:
    """Poll the daemon until `count` waits are parked, or the budget ends; returns how many were."""
    deadline = time.monotonic() + BLOCK_BUDGET_S
    parked = parked_waits(mount)
    while parked < count and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        parked = parked_waits(mount)
    return parked


def receive(conn: Connection, who: str, kind: type[T], budget: float = MESSAGE_BUDGET_S) -> T:
    """The next message from a child within `budget` seconds; a child sends a str only to say why it failed."""
    if not conn.poll(budget):
        raise MeasureError(f"{who} sent nothing within {budget:.0f} s")
    try:
        message = conn.recv()
    except EOFError:
        raise MeasureError(f"{who} exited without a result") from None
    if isinstance(message, str):
        raise MeasureError(message)
    if not isinstance(message, kind):
        raise MeasureError(f"{who} sent {message!r} where a {kind.__name__} was due")
    return message


def reap(proc: mp.process.BaseProcess, timeout: float) -> None:
    """Join a child; one still blocked after a failure (in a wait with a far deadline) is killed."""
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()


# table 1: one waiter, one signaller

def waiter_loop(dev: Device, syncobj: Syncobj, conn: Connection, iterations: int) -> list[int]:
    """Per iteration: time a GET_CAP, reset, announce, block; send the wake-up time. Returns the round trips.

    The GET_CAP comes first, while the signaller is idle waiting for the announcement, so that
    neither process times an ioctl while the other is busy."""
    cap = get_cap_args()
    round_trips = []
    for _ in range(iterations):
        round_trips.append(round_trip(dev, cap))
        syncobj.reset()
        conn.send(True)
        syncobj.wait(timeout_ns=abs_timeout(WAIT_TIMEOUT_S), flags=WAIT_FOR_SUBMIT)
        conn.send(time.monotonic_ns())
    return round_trips


def waiter_main(node: str, syncobj_fd: int, iterations: int, conn: Connection) -> None:
    """The waiter process: its own file, the syncobj imported from the signaller's opaque fd."""
    try:
        with Device(node) as dev:
            syncobj = Syncobj.import_fd(dev, syncobj_fd)
            os.close(syncobj_fd)
            conn.send(waiter_loop(dev, syncobj, conn, iterations))
    except Exception as e:
        conn.send(f"waiter: {type(e).__name__}: {e}")
    finally:
        conn.close()


def signaller_loop(mount: MountedEmudev, dev: Device, syncobj: Syncobj, conn: Connection,
                   iterations: int) -> tuple[list[int], list[int], list[int]]:
    """Per iteration: see the waiter parked, time a GET_CAP, signal; (round trips, signal calls, wake-ups)."""
    cap = get_cap_args()
    signal_args, _handles = prepared_signal(syncobj)
    round_trips, calls, wake_ups = [], [], []
    for _ in range(iterations):
        receive(conn, "waiter", bool)
        if wait_until_parked(mount, 1) < 1:
            raise MeasureError(f"the waiter was not parked in the daemon within {BLOCK_BUDGET_S:.0f} s")
        round_trips.append(round_trip(dev, cap))
        start, end = timed_ioctl(dev, SIGNAL, signal_args)
        calls.append(end - start)
        wake_ups.append(receive(conn, "waiter", int) - start)
    return round_trips, calls, wake_ups


def ping_pong(mount: MountedEmudev, iterations: int) -> PingPong | str:
    """This process signals; a forked waiter, with a file of its own, waits."""
    ctx = mp.get_context("fork")
    total = WARMUP + iterations
    with Device(mount.node(0)) as dev, dev.create_syncobj() as syncobj:
        syncobj_fd = syncobj.export()
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=waiter_main, args=(mount.node(0), syncobj_fd, total, child_conn))
        proc.start()
        child_conn.close()
        os.close(syncobj_fd)
        try:
            round_trips, calls, wake_ups = signaller_loop(mount, dev, syncobj, conn, total)
            waiter_round_trips = receive(conn, "waiter", list)
        except (MeasureError, OSError) as e:
            return str(e)
        finally:
            conn.close()
            reap(proc, MESSAGE_BUDGET_S)
    return PingPong(round_trips[WARMUP:], waiter_round_trips[WARMUP:], calls[WARMUP:], wake_ups[WARMUP:])


# table 2: 1,000 waiters in 64 processes

def threads_per_process() -> list[int]:
    """WAITERS spread over PROCESSES as evenly as integers allow (16 or 15 each)."""
    share, extra = divmod(WAITERS, PROCESSES)
    return [share + (i < extra) for i in range(PROCESSES)]


def wait_in_threads(syncobj: Syncobj, count: int, timeout_ns: int) -> list[int | str]:
    """Block `count` threads in a wait each; each records its wake-up time or its error.

    The threads do nothing but sit in the ioctl (which releases the GIL), so 1,000 of them on two
    CPUs cost memory, not CPU, until the signal."""
    results: list[int | str] = ["never returned"] * count

    def wait_one(index: int) -> None:
        try:
            syncobj.wait(timeout_ns=timeout_ns, flags=WAIT_FOR_SUBMIT)
            results[index] = time.monotonic_ns()
        except OSError as e:
            results[index] = str(e)

    threads = [threading.Thread(target=wait_one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def fan_child_main(inherited: Inherited, count: int, conn: Connection) -> None:
    """One client process: its own file, the shared syncobj imported, `count` waiting threads."""
    try:
        with Device(inherited.node) as dev:
            syncobj = Syncobj.import_fd(dev, inherited.syncobj_fd)
            os.close(inherited.syncobj_fd)
            conn.send(wait_in_threads(syncobj, count, inherited.timeout_ns))
    except Exception as e:
        conn.send(f"client {os.getpid()}: {type(e).__name__}: {e}")
    finally:
        conn.close()


def fork_waiters(node: str, syncobj: Syncobj) -> list[Child]:
    """One child per share of threads_per_process(), each importing the syncobj from the same opaque fd.

    The fd is inherited across fork, so no unix socket is needed; all waits share one deadline."""
    ctx = mp.get_context("fork")
    inherited = Inherited(node, syncobj.export(), abs_timeout(WAIT_TIMEOUT_S))
    children = []
    try:
        for count in threads_per_process():
            conn, child_conn = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=fan_child_main, args=(inherited, count, child_conn))
            proc.start()
            child_conn.close()
            children.append((proc, conn))
    finally:
        os.close(inherited.syncobj_fd)
    return children


def collect(children: list[Child]) -> list[int | str]:
    """Every waiter's wake-up time or error, within one budget for all children; a child that failed
    as a whole counts as its share of failures."""
    deadline = time.monotonic() + MESSAGE_BUDGET_S
    results: list[int | str] = []
    for (proc, conn), count in zip(children, threads_per_process(), strict=True):
        try:
            results += receive(conn, f"client {proc.pid}", list, max(0.0, deadline - time.monotonic()))
        except MeasureError as e:
            results += [str(e)] * count
        finally:
            conn.close()
            reap(proc, max(0.0, deadline - time.monotonic()))
    return results


def abandon(children: list[Child]) -> None:
    """Children whose waiters will never be signalled: end them now rather than at their deadline."""
    for proc, conn in children:
        conn.close()
        reap(proc, 0.0)


def daemon_threads(mount: MountedEmudev) -> int:
    return psutil.Process(mount.pid).num_threads()


def sort_wake_ups(results: list[int | str], start_ns: int) -> tuple[list[int], list[str]]:
    """Delays of the waiters that woke after the signal started, and what happened to the others."""
    delays = [r - start_ns for r in results if isinstance(r, int) and r >= start_ns]
    failures = [r if isinstance(r, str) else "woke before the signal" for r in results
                if isinstance(r, str) or r < start_ns]
    return delays, failures


def fan_out(mount: MountedEmudev) -> FanOut | str:
    """Park every waiter, count the daemon's threads, signal once, and collect every wake-up."""
    before = daemon_threads(mount)
    with Device(mount.node(0)) as dev, dev.create_syncobj() as syncobj:
        signal_args, _handles = prepared_signal(syncobj)
        forked = time.monotonic()
        children = fork_waiters(mount.node(0), syncobj)
        parked = wait_until_parked(mount, WAITERS)
        park_s = time.monotonic() - forked
        threads_parked = daemon_threads(mount)
        try:
            start, end = timed_ioctl(dev, SIGNAL, signal_args)
        except OSError as e:
            abandon(children)
            return f"SYNCOBJ_SIGNAL failed: {e}"
        signalled = daemon_threads(mount)
        results = collect(children)
    delays, failures = sort_wake_ups(results, start)
    threads = ThreadCounts(before, threads_parked, signalled, daemon_threads(mount))
    return FanOut(parked, park_s, delays, failures, end - start, threads)


# report

def round_trip_unit(result: PingPong) -> Latency:
    """Both processes' GET_CAP samples pooled: the unit the wake-up is counted in."""
    return summarise(result.round_trip_signaller + result.round_trip_waiter)


def latency_row(label: str, samples_ns: list[int], unit: Latency) -> str:
    latency = summarise(samples_ns)
    return f"{label:{LABEL_WIDTH}}{latency.p50_us:9.1f}{latency.p99_us:9.1f}{latency.p50_us / unit.p50_us:14.2f}"


def ping_pong_table(result: PingPong | str, iterations: int) -> list[str]:
    lines = [f"wake-up through a shared syncobj, {iterations} iterations after {WARMUP} warm-up: waiter and "
             "signaller are separate processes with files of their own, unpinned"]
    if isinstance(result, str):
        return [*lines, f"  not measured: {result}"]
    unit = round_trip_unit(result)
    return [*lines,
            f"{'':{LABEL_WIDTH}}{'p50 µs':>9}{'p99 µs':>9}{TIMES + ' round trip':>14}",
            latency_row("GET_CAP round trip, both processes", result.round_trip_signaller
                        + result.round_trip_waiter, unit),
            latency_row("  timed by the signaller", result.round_trip_signaller, unit),
            latency_row("  timed by the waiter", result.round_trip_waiter, unit),
            latency_row("SYNCOBJ_SIGNAL call (signaller)", result.signal_call, unit),
            latency_row("wake-up: SIGNAL start → wait returns", result.wake_up, unit),
            f"  the waiter is in SYNCOBJ_TIMELINE_WAIT (libaccel's Syncobj.wait) at point 0, WAIT_FOR_SUBMIT, "
            f"deadline {WAIT_TIMEOUT_S:.0f} s; {TIMES} round trip = p50 / both processes' GET_CAP p50"]


def ping_pong_verdict(result: PingPong | str) -> str:
    label = f"target wake-up p50 ≤ {WAKE_TARGET:g} round trips"
    if isinstance(result, str):
        return f"{label}: not measured"
    ratio = summarise(result.wake_up).p50_us / round_trip_unit(result).p50_us
    return f"{label}: {ratio:.2f}{TIMES} — {'met' if ratio <= WAKE_TARGET else 'NOT met'}"


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def spread(delays: list[int]) -> tuple[int, int]:
    """p50 and p99 of the wake-up delays, nearest rank like every table of this package."""
    ordered = sorted(delays)
    return percentile(ordered, 50), percentile(ordered, 99)


def fan_out_rows(result: FanOut) -> list[str]:
    p50, p99 = spread(result.delays_ns)
    t = result.threads
    return [f"{'parked when signalled':{LABEL_WIDTH}}{result.parked} / {WAITERS} "
            f"(polled {result.park_s:.1f} s from the first fork)",
            f"{'woke after the signal, wait returned 0':{LABEL_WIDTH}}{len(result.delays_ns)} / {WAITERS}",
            f"{'wake-up delay since the SIGNAL start':{LABEL_WIDTH}}p50 {_ms(p50)}, p99 {_ms(p99)}, "
            f"min {_ms(min(result.delays_ns))}, max {_ms(max(result.delays_ns))}; p99/p50 {p99 / p50:.2f}{TIMES}",
            f"{'SYNCOBJ_SIGNAL call':{LABEL_WIDTH}}{_ms(result.signal_ns)} "
            f"({result.signal_ns / 1000 / WAITERS:.1f} µs per parked wait)",
            f"{'daemon threads':{LABEL_WIDTH}}before {t.before}, all parked {t.parked}, "
            f"signal returned {t.signalled}, clients gone {t.after}"]


def failure_notes(failures: list[str]) -> list[str]:
    """Failures grouped by message, so 1,000 identical errors take one line."""
    return [f"  {n} {TIMES} {message}" for message, n in Counter(failures).most_common()]


def fan_out_table(result: FanOut | str) -> list[str]:
    lines = [f"{WAITERS:,} waiters in {PROCESSES} processes ({min(threads_per_process())} or "
             f"{max(threads_per_process())} threads each) on one syncobj shared by opaque fd, one SYNCOBJ_SIGNAL"]
    if isinstance(result, str):
        return [*lines, f"  not measured: {result}"]
    if not result.delays_ns:
        return [*lines, "  no waiter woke after the signal", *failure_notes(result.failures)]
    return [*lines, *fan_out_rows(result), *failure_notes(result.failures)]


def fan_out_verdict(result: FanOut | str) -> str:
    label = f"target p99/p50 ≤ {SPREAD_TARGET:g}{TIMES}, every waiter woken, daemon threads not per waiter"
    if isinstance(result, str) or not result.delays_ns:
        return f"{label}: not measured"
    p50, p99 = spread(result.delays_ns)
    woken = len(result.delays_ns)
    t = result.threads
    grown = max(t.parked, t.signalled, t.after) - t.before
    parts = [f"p99/p50 {p99 / p50:.2f}{TIMES} {'met' if p99 <= SPREAD_TARGET * p50 else 'NOT met'}",
             f"{woken}/{WAITERS} woken{'' if woken == WAITERS else ' — NOT all'}",
             f"threads +{grown} for {WAITERS:,} parked waits"]
    return f"{label}: " + "; ".join(parts)


def run(quick: bool) -> int:
    """One daemon serves both tables; the second comes after the first so its waiters cannot disturb it."""
    iterations = QUICK_ITERATIONS if quick else ITERATIONS
    print(f"Linux {os.uname().release}, {len(os.sched_getaffinity(0))} CPUs, emudev default --workers", flush=True)
    try:
        with MountedEmudev(devices=1) as mount:
            pair = ping_pong(mount, iterations)
            fan = fan_out(mount)
    except DaemonStartError as e:
        print(f"emudev did not start: {e}")
        return 1
    print("\n".join(["", *ping_pong_table(pair, iterations), "", ping_pong_verdict(pair),
                     "", *fan_out_table(fan), "", fan_out_verdict(fan)]))
    return 0 if isinstance(pair, PingPong) or isinstance(fan, FanOut) else 1
