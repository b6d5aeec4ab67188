"""BO create+close rate of eight concurrent clients, on top of few and of many live BOs.

A driver's handle table, offset manager and address space must stay O(1) or O(log n) per
operation: a client that holds ten thousand BOs (a model's weights, a pool of staging buffers)
must create and close the next one as fast as a client holding a hundred. So the same timed loop
runs twice, with N = 100 and N = 10,000 live BOs per client, each time on a fresh daemon, and the
ratio of the two costs is the result; absolute numbers drift with the VM, the ratio much less.

The live BOs are never mapped: emudev gives a BO memory (a memfd, a file descriptor in the daemon)
only when it is first touched, so eight clients with 10,000 idle BOs each cost the daemon no descriptors.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.synchronize
import os
import signal
import statistics
import time
from contextlib import suppress
from dataclasses import dataclass

from emudev.testing import DaemonStartError, MountedEmudev
from userspace.libaccel import Device
from userspace.libaccel.bo import MAPPABLE

CLIENTS = 8
LIVE_COUNTS = (100, 10_000)
PAIRS = 2000
QUICK_PAIRS = 500
WARMUP = 50
BO_SIZE = 4096
DAEMON_ARGS = ("--memory", "4G")
TARGET = 1.2
# Budgets keep a pathological daemon from holding the whole run hostage; what was cut is reported.
BARRIER_TIMEOUT = 120.0
TIMED_BUDGET = 10.0
RESULT_TIMEOUT = 2 * BARRIER_TIMEOUT + TIMED_BUDGET
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class ClientResult:
    """One client's samples and when its timed loop ran (CLOCK_MONOTONIC is the same in every process)."""

    fill_s: float
    create_ns: list[int]
    close_ns: list[int]
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class Teardown:
    """How long the daemon took to exit after the clients answered, and whether it had to be killed."""

    seconds: float
    killed: bool


@dataclass(frozen=True)
class Phase:
    """Every client's samples for one count of live BOs, and the daemon's teardown after them."""

    live: int
    clients: list[ClientResult]
    teardown: Teardown

    @property
    def pair_ns(self) -> list[int]:
        return [a + b for c in self.clients for a, b in zip(c.create_ns, c.close_ns, strict=True)]

    @property
    def pairs_per_s(self) -> float:
        wall_ns = max(c.end_ns for c in self.clients) - min(c.start_ns for c in self.clients)
        return len(self.pair_ns) / (wall_ns / 1e9)


# client processes

def fill(dev: Device, live: int) -> float:
    """Create the live BOs; the seconds it took show whether creation alone slows down as they pile up."""
    start = time.monotonic()
    for _ in range(live):
        dev.create_bo(BO_SIZE, MAPPABLE)
    return time.monotonic() - start


def time_pairs(dev: Device, pairs: int, deadline: float) -> tuple[list[int], list[int]]:
    """Create and close one BO per iteration, timing each half, until `pairs` or the deadline."""
    clock = time.perf_counter_ns
    create_ns: list[int] = []
    close_ns: list[int] = []
    while len(create_ns) < pairs and time.monotonic() < deadline:
        t0 = clock()
        bo = dev.create_bo(BO_SIZE, MAPPABLE)
        t1 = clock()
        bo.close()
        t2 = clock()
        create_ns.append(t1 - t0)
        close_ns.append(t2 - t1)
    return create_ns, close_ns


def measure_client(dev: Device, live: int, pairs: int, barrier: mp.synchronize.Barrier) -> ClientResult:
    """Fill, warm up, then time in step with the other clients so that all of them load the daemon at once.

    The file stays open until every client has finished timing: its release drops all its
    handles, daemon work that would otherwise land inside the other clients' timed loops.
    The live BOs are not kept as Bo objects: a handle lives in the daemon until GEM_CLOSE or the
    file's release, whatever happens to the Python object.
    """
    fill_s = fill(dev, live)
    for _ in range(WARMUP):
        dev.create_bo(BO_SIZE, MAPPABLE).close()
    barrier.wait(BARRIER_TIMEOUT)
    start_ns = time.monotonic_ns()
    create_ns, close_ns = time_pairs(dev, pairs, time.monotonic() + TIMED_BUDGET)
    end_ns = time.monotonic_ns()
    barrier.wait(BARRIER_TIMEOUT)
    return ClientResult(fill_s, create_ns, close_ns, start_ns, end_ns)


def client_main(node: str, live: int, pairs: int, barrier: mp.synchronize.Barrier,
                conn: mp.connection.Connection) -> None:
    """Send back samples or the reason there are none; a failure breaks the barrier so no one waits forever.

    The answer goes out before the file is closed, because closing waits for the daemon, which
    may be busy for a long time releasing the files of the clients that closed first.
    """
    dev: Device | None = None
    try:
        dev = Device(node)
        conn.send(measure_client(dev, live, pairs, barrier))
    except Exception as e:
        barrier.abort()
        conn.send(f"client {os.getpid()}: {type(e).__name__}: {e}")
    finally:
        conn.close()
        if dev is not None:
            close_quietly(dev)


def close_quietly(dev: Device) -> None:
    """Close after answering: the descriptor goes whatever close() says, and a daemon stopped in the
    meantime fails the FLUSH with ECONNABORTED, which libaccel does not count as a device gone."""
    with suppress(OSError):
        dev.close()


# parent

Client = tuple[mp.process.BaseProcess, mp.connection.Connection]


def start_clients(node: str, live: int, pairs: int) -> list[Client]:
    """Fork CLIENTS processes, each opening its own file; each answers on its own pipe."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(CLIENTS)
    clients = []
    for _ in range(CLIENTS):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=client_main, args=(node, live, pairs, barrier, sender))
        proc.start()
        sender.close()
        clients.append((proc, receiver))
    return clients


def receive(clients: list[Client]) -> list[ClientResult | str]:
    deadline = time.monotonic() + RESULT_TIMEOUT
    return [_receive(proc, conn, deadline) for proc, conn in clients]


def _receive(proc: mp.process.BaseProcess, conn: mp.connection.Connection, deadline: float) -> ClientResult | str:
    """The client's result; a client stuck in a request the daemon never answers is killed, not waited for."""
    try:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            proc.kill()
            return f"client {proc.pid} sent nothing within {RESULT_TIMEOUT:.0f} s and was killed"
        return conn.recv()
    except EOFError:
        proc.join()
        return f"client {proc.pid} exited with status {proc.exitcode} without a result"
    finally:
        conn.close()


def stop_daemon(mount: MountedEmudev) -> Teardown:
    """SIGTERM the daemon once every client has answered and time how long it takes to go.

    The daemon exits when it has released the last client file, and releasing a file drops every
    handle it holds, so this is the cost of closing N BOs per client in bulk. MountedEmudev
    SIGKILLs a daemon that is not gone within its stop timeout; that is reported, not waited for.
    """
    start = time.monotonic()
    mount.stop()
    killed = mount.proc is not None and mount.proc.returncode == -signal.SIGKILL
    return Teardown(time.monotonic() - start, killed)


def measure_phase(live: int, pairs: int) -> Phase | str:
    """A fresh daemon per count, so that one phase's teardown cannot spill into the next one's timing.

    The clients are joined only after the daemon is gone: those still closing their files then
    fail at once instead of waiting for the daemon to get to them.
    """
    mount = MountedEmudev(devices=1, extra_args=DAEMON_ARGS)
    try:
        mount.start()
    except DaemonStartError as e:
        return f"emudev did not start: {e}"
    clients: list[Client] = []
    try:
        clients = start_clients(mount.node(0), live, pairs)
        results = receive(clients)
    finally:
        teardown = stop_daemon(mount)
        for proc, _ in clients:
            proc.join()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        return "; ".join(errors)
    return Phase(live, [r for r in results if isinstance(r, ClientResult)], teardown)


# report

def _us(ns: float) -> float:
    return ns / 1000


def row(phase: Phase | str, live: int) -> str:
    if isinstance(phase, str):
        return f"{live:>10,}  {'n/a':>6}  (no result: {phase})"
    pair = phase.pair_ns
    creates = [n for c in phase.clients for n in c.create_ns]
    closes = [n for c in phase.clients for n in c.close_ns]
    teardown = f"{phase.teardown.seconds:.2f}" + (" killed" if phase.teardown.killed else "")
    fill_s = max(c.fill_s for c in phase.clients)
    return (f"{live:>10,}  {len(pair):>6}  {_us(statistics.median(pair)):8.1f}  {_us(statistics.fmean(pair)):8.1f}"
            f"  {_us(statistics.median(creates)):8.1f}  {_us(statistics.median(closes)):8.1f}"
            f"  {phase.pairs_per_s:8.0f}  {fill_s:6.2f}  {teardown:>9}")


def table(phases: dict[int, Phase | str], pairs: int) -> list[str]:
    lines = [f"BO create+close, {CLIENTS} clients at once, each timing up to {pairs} pairs (budget "
             f"{TIMED_BUDGET:.0f} s) on top of N live {BO_SIZE // 1024} KiB MAPPABLE BOs of its own",
             f"{'N live':>10}  {'pairs':>6}  {'pair µs':>18}  {'create':>8}  {'close':>8}  {'pairs/s':>8}"
             f"  {'fill':>6}  {'teardown':>9}",
             f"{'per client':>10}  {'timed':>6}  {'p50':>8}  {'mean':>8}  {'p50 µs':>8}  {'p50 µs':>8}"
             f"  {'all':>8}  {'s':>6}  {'s':>9}"]
    lines += [row(phase, live) for live, phase in phases.items()]
    return [*lines,
            "  create = BO_CREATE + BO_INFO (libaccel's Bo), close = GEM_CLOSE; pairs/s = all clients together;",
            "  fill = creating the N live BOs (slowest client); teardown = SIGTERM to daemon exit once the clients",
            "  have answered (it first releases their files, i.e. every live BO); killed = SIGKILLed at the stop "
            "timeout"]


def verdict(phases: dict[int, Phase | str]) -> str:
    few, many = (phases[n] for n in LIVE_COUNTS)
    label = f"cost({LIVE_COUNTS[1]:,})/cost({LIVE_COUNTS[0]:,})"
    if isinstance(few, str) or isinstance(many, str):
        return f"{label}: not measured"
    p50 = statistics.median(many.pair_ns) / statistics.median(few.pair_ns)
    mean = statistics.fmean(many.pair_ns) / statistics.fmean(few.pair_ns)
    met = "target met" if p50 <= TARGET else "target NOT met"
    return f"{label}: p50 {p50:.2f}{TIMES}, mean {mean:.2f}{TIMES} — {met} (target p50 ratio ≤ {TARGET})"


def run(quick: bool) -> int:
    """Print the table and the target line; fail only if neither count could be measured."""
    pairs = QUICK_PAIRS if quick else PAIRS
    print(f"{CLIENTS} client processes, {len(os.sched_getaffinity(0))} CPUs, daemon {' '.join(DAEMON_ARGS)}",
          flush=True)
    phases = {live: measure_phase(live, pairs) for live in LIVE_COUNTS}
    print("\n".join(["", *table(phases, pairs), "", verdict(phases)]))
    return 0 if any(isinstance(p, Phase) for p in phases.values()) else 1
