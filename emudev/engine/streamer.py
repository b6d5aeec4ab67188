"""The command streamer and the engine threads.

The streamer splits a job's program into one queue per engine; each engine thread
runs its packets in order, so independent engines work concurrently (numpy drops
the GIL in its heavy kernels) and only semaphores order them. A SEM_WAIT sleeps on
the doorbell of emudev.engine.semaphore until its word meets the condition.
"""

from __future__ import annotations

import errno
import logging
import queue
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from emudev import check
from emudev.driver.fault_inject import FaultInjection
from emudev.engine.execute import DeviceMemory, EngineFault, run_compute
from emudev.engine.job import Fault, Job
from emudev.engine.program import ENGINE_NAMES, Step
from emudev.engine.semaphore import doorbell
from emudev.sync.fence import now_ns
from emudev.uapi import defs

log = logging.getLogger("emudev.engine")

SERIAL = -1  # the pseudo-engine of the deterministic mode


@dataclass(eq=False)
class JobRun:
    """One job on the engines: how many engine queues are still busy, and why it stopped."""

    job: Job
    pending: int
    on_done: Callable[[JobRun], None]
    error: int = 0
    fault: Fault | None = None
    aborted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event | None = None

    def abort(self, error: int, fault: Fault | None = None) -> None:
        """Stop the job: the engines drop what they have not started (the first reason wins),
        and those waiting on a semaphore wake to see it."""
        with self._lock:
            if not self.error:
                self.error, self.fault = error, fault
            self.aborted = True
            wake = self._wake
        if wake is not None:
            wake.set()
        doorbell.ring()

    def sleep(self, timeout: float | None = None) -> None:
        """Sleep until the job is aborted, or for `timeout` seconds. The Event is made by the
        first sleeper: building one for every job would cost more than the rest of a small
        job's bookkeeping, and only injected hangs and slowdowns sleep."""
        with self._lock:
            if self.aborted:
                return
            if self._wake is None:
                self._wake = threading.Event()
            wake = self._wake
        wake.wait(timeout)

    def engine_finished(self) -> None:
        with self._lock:
            self.pending -= 1
            last = self.pending == 0
        if last:
            self.on_done(self)


class Engine(threading.Thread):
    """One engine of the NPU: a thread working through its packets."""

    def __init__(self, engine: int, device_name: str, sem_grace_ns: int, inject: FaultInjection) -> None:
        super().__init__(name=f"{device_name}-{ENGINE_NAMES.get(engine, 'serial')}", daemon=True)
        self.engine = engine
        self.inject = inject
        self.inbox: queue.SimpleQueue[tuple[JobRun, tuple[Step, ...]] | None] = queue.SimpleQueue()
        self.busy_ns = 0
        self._waited_ns = 0
        self.sem_grace_ns = sem_grace_ns
        self.busy_by_file: defaultdict[int, int] = defaultdict(int)
        self.packets = 0

    def run(self) -> None:
        while (work := self.inbox.get()) is not None:
            self._work(*work)

    def _work(self, run: JobRun, steps: tuple[Step, ...]) -> None:
        """Run one job's packets. Nothing here may end the thread, or the device would time out every
        later job: a job the engine cannot run fails with EIO, as a driver fails a job after an engine
        error, and the engine takes the next one."""
        started = now_ns()
        self._waited_ns = 0
        try:
            self._run_steps(run, steps)
        except Exception:
            log.exception("%s: engine %s failed outside a packet", run.job.describe(), self.name)
            run.abort(-errno.EIO)
        spent = now_ns() - started - self._waited_ns  # busy means working, not waiting on a semaphore
        self.busy_ns += spent
        self.busy_by_file[run.job.context.file.id] += spent
        try:
            run.engine_finished()
        except Exception:
            log.exception("%s: completing the job failed on engine %s", run.job.describe(), self.name)

    def _run_steps(self, run: JobRun, steps: tuple[Step, ...]) -> None:
        memory = DeviceMemory(run.job.context.file.vm)
        for position, step in enumerate(steps):
            if run.aborted or not self._execute(run, memory, step, steps[position + 1:]):
                return

    def _execute(self, run: JobRun, memory: DeviceMemory, step: Step, later: Sequence[Step]) -> bool:
        """Run one packet; False when it stopped the job."""
        try:
            self._run_step(run, memory, step, later)
        except EngineFault as fault:
            run.abort(-errno.EFAULT, Fault(step.engine, step.index, fault.va, fault.reason))
            return False
        except Exception:  # an engine bug must fail the job, never the daemon
            log.exception("%s: %s failed on packet %d", run.job.describe(), step.name, step.index)
            run.abort(-errno.EIO)
            return False
        self.packets += 1
        return True

    def _run_step(self, run: JobRun, memory: DeviceMemory, step: Step, later: Sequence[Step]) -> None:
        if self.inject.take_hang(step.engine):
            run.sleep()  # hung until the timeout resets the engines
            return
        if slow_ms := self.inject.slow_ms.get(step.engine):
            run.sleep(slow_ms / 1000)
        if step.name == "SEM_WAIT":
            self.wait_semaphore(run, memory, step, later)
            return
        control = _CONTROL.get(step.name)
        if control is None:
            run_compute(memory, step)
        else:
            control(self, run, memory, step.packet)

    @staticmethod
    def semaphore_condition(memory: DeviceMemory, p: defs.drm_emudev_pkt_sem_wait) -> Callable[[], bool]:
        word = memory.word(p.va, np.uint32, write=False)
        if p.cond == defs.DRM_EMUDEV_SEM_GEQUAL:
            return lambda: bool(word[0] >= p.value)
        return lambda: bool(word[0] == p.value)

    def wait_semaphore(self, run: JobRun, memory: DeviceMemory, step: Step, later: Sequence[Step]) -> None:
        """Sleep until the word meets the condition; the checker hears of a wait that blocks."""
        p: defs.drm_emudev_pkt_sem_wait = step.packet
        satisfied = self.semaphore_condition(memory, p)
        if doorbell.holds(satisfied):
            return
        if check.active is not None:
            found = run.job.context.file.vm.translate(p.va, 4)
            if found is not None:
                # Over-approximated: other engines' packets may have run already.
                others = [s for s in run.job.program.steps if s.engine != step.engine]
                check.active.semaphore_blocked(
                    run.job, step, (found.obj.id, found.offset), [*others, *later],
                    lambda: not satisfied() and not run.aborted, self.sem_grace_ns)
        blocked = now_ns()
        doorbell.wait(lambda: run.aborted or satisfied())
        self._waited_ns += now_ns() - blocked

    def signal_semaphore(self, run: JobRun, memory: DeviceMemory, p: defs.drm_emudev_pkt_sem_signal) -> None:
        word = memory.word(p.va, np.uint32, write=True)
        with doorbell.writing():
            word[0] = p.value if p.op == defs.DRM_EMUDEV_SEM_SET else (int(word[0]) + p.value) & 0xFFFFFFFF

    def timestamp(self, run: JobRun, memory: DeviceMemory, p: defs.drm_emudev_pkt_timestamp) -> None:
        memory.word(p.va, np.uint64, write=True)[0] = time.monotonic_ns()


_CONTROL: dict[str, Callable[[Engine, JobRun, DeviceMemory, defs.UapiStruct], None]] = {
    "NOP": lambda engine, run, memory, packet: None,
    "SEM_SIGNAL": Engine.signal_semaphore,
    "TIMESTAMP": Engine.timestamp,
}


class SerialEngine(Engine):
    """Deterministic mode: one thread runs every engine's packets one at a time, choosing
    the next engine with the seeded RNG (each engine keeps its own order), so a seed
    replays the same interleaving."""

    def _run_steps(self, run: JobRun, steps: tuple[Step, ...]) -> None:
        memory = DeviceMemory(run.job.context.file.vm)
        queues: dict[int, deque[Step]] = defaultdict(deque)
        for step in steps:
            queues[step.engine].append(step)
        rng = self.inject.rng or random.Random(0)
        while queues and not run.aborted:
            ready = self._ready(memory, queues)
            if not ready:
                doorbell.wait(lambda: run.aborted or bool(self._ready(memory, queues)))
                continue
            engine = rng.choice(ready)
            step = queues[engine].popleft()
            if not queues[engine]:
                del queues[engine]
            if not self._execute(run, memory, step, list(queues.get(engine, ()))):
                return

    def _ready(self, memory: DeviceMemory, queues: dict[int, deque[Step]]) -> list[int]:
        """The engines whose next packet can run now."""
        return [e for e in sorted(queues) if not self._blocked(memory, queues[e][0])]

    def _blocked(self, memory: DeviceMemory, step: Step) -> bool:
        if step.name != "SEM_WAIT":
            return False
        try:
            return not self.semaphore_condition(memory, step.packet)()
        except EngineFault:
            return False  # running it reports the fault


class CommandStreamer:
    """Hands a job's packets to the engine threads (started on first use)."""

    def __init__(self, device_name: str, sem_grace_ns: int, inject: FaultInjection) -> None:
        self.device_name = device_name
        self.inject = inject
        self.sem_grace_ns = sem_grace_ns  # how long a semaphore may block before the checker calls it stuck
        self.engines: dict[int, Engine] = {}
        self._lock = threading.Lock()

    def _engine(self, engine: int) -> Engine:
        with self._lock:
            if engine not in self.engines:
                kind = SerialEngine if engine == SERIAL else Engine
                self.engines[engine] = kind(engine, self.device_name, self.sem_grace_ns, self.inject)
                self.engines[engine].start()
            return self.engines[engine]

    def start(self, job: Job, on_done: Callable[[JobRun], None]) -> JobRun:
        """Give each engine its packets of `job` (no engine is woken for a NOP);
        `on_done` runs on the engine thread that finishes last."""
        program = job.program
        queues = {SERIAL: program.work} if self.inject.rng is not None and program.work else program.per_engine
        run = JobRun(job, len(queues), on_done)
        if not queues:
            on_done(run)
        for engine, steps in queues.items():
            self._engine(engine).inbox.put((run, steps))
        return run
