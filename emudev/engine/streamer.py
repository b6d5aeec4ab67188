"""The command streamer and the engine threads.

The streamer splits a job's program into one queue per engine; each engine thread
runs its packets in order, so independent engines work concurrently (numpy drops
the GIL in its heavy kernels) and only semaphores order them. SEM_WAIT polls its
word, as hardware would, because the CPU or another device may be the writer.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emudev import check
from emudev.engine.execute import DeviceMemory, EngineFault, run_compute
from emudev.engine.job import Fault, Job
from emudev.engine.program import ENGINE_NAMES, Step
from emudev.sync.fence import now_ns
from emudev.uapi import defs

log = logging.getLogger("emudev.engine")

_SEM_POLL_S = 0.0005


@dataclass(eq=False)
class JobRun:
    """One job on the engines: how many engine queues are still busy, and why it stopped."""

    job: Job
    pending: int
    on_done: Callable[[JobRun], None]
    error: int = 0
    fault: Fault | None = None
    aborted: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def abort(self, error: int, fault: Fault | None = None) -> None:
        """Stop the job: the engines drop what they have not started (the first reason wins)."""
        with self._lock:
            if not self.error:
                self.error, self.fault = error, fault
        self.aborted.set()

    def engine_finished(self) -> None:
        with self._lock:
            self.pending -= 1
            last = self.pending == 0
        if last:
            self.on_done(self)


class Engine(threading.Thread):
    """One engine of the NPU: a thread working through its packets."""

    def __init__(self, engine: int, device_name: str, semaphores: threading.Condition, sem_grace_ns: int) -> None:
        super().__init__(name=f"{device_name}-{ENGINE_NAMES[engine]}", daemon=True)
        self.engine = engine
        self.semaphores = semaphores
        self.inbox: queue.SimpleQueue[tuple[JobRun, list[Step]] | None] = queue.SimpleQueue()
        self.busy_ns = 0
        self.sem_grace_ns = sem_grace_ns
        self.busy_by_file: defaultdict[int, int] = defaultdict(int)
        self.packets = 0

    def run(self) -> None:
        while (work := self.inbox.get()) is not None:
            run, steps = work
            started = now_ns()
            try:
                self._run_steps(run, steps)
            finally:
                spent = now_ns() - started
                self.busy_ns += spent
                self.busy_by_file[run.job.context.file.id] += spent
                run.engine_finished()

    def _run_steps(self, run: JobRun, steps: list[Step]) -> None:
        memory = DeviceMemory(run.job.context.file.vm)
        for position, step in enumerate(steps):
            if run.aborted.is_set():
                return
            try:
                self._run_step(run, memory, step, steps[position + 1:])
            except EngineFault as fault:
                run.abort(-errno.EFAULT, Fault(self.engine, step.index, fault.va, fault.reason))
                return
            except Exception:  # an engine bug must fail the job, never the daemon
                log.exception("%s: %s failed on packet %d", run.job.describe(), step.name, step.index)
                run.abort(-errno.EIO)
                return
            self.packets += 1

    def _run_step(self, run: JobRun, memory: DeviceMemory, step: Step, later: list[Step]) -> None:
        if step.name == "SEM_WAIT":
            self.wait_semaphore(run, memory, step, later)
            return
        control = _CONTROL.get(step.name)
        if control is None:
            run_compute(memory, step)
        else:
            control(self, run, memory, step.packet)

    def wait_semaphore(self, run: JobRun, memory: DeviceMemory, step: Step, later: list[Step]) -> None:
        """Poll the word until it meets the condition; the checker hears of a wait that blocks."""
        p: defs.drm_emudev_pkt_sem_wait = step.packet
        word = memory.word(p.va, np.uint32, write=False)
        satisfied = (lambda: word[0] >= p.value) if p.cond == defs.DRM_EMUDEV_SEM_GEQUAL else (
            lambda: word[0] == p.value)
        with self.semaphores:
            if satisfied():
                return
        if check.active is not None:
            found = run.job.context.file.vm.translate(p.va, 4)
            if found is not None:
                # Over-approximated: other engines' packets may have run already.
                others = [s for s in run.job.program.steps if s.engine != step.engine]
                check.active.semaphore_blocked(
                    run.job, step, (found.obj.id, found.offset), others + later,
                    lambda: not satisfied() and not run.aborted.is_set(), self.sem_grace_ns)
        with self.semaphores:
            while not satisfied() and not run.aborted.is_set():
                self.semaphores.wait(_SEM_POLL_S)

    def signal_semaphore(self, run: JobRun, memory: DeviceMemory, p: defs.drm_emudev_pkt_sem_signal) -> None:
        word = memory.word(p.va, np.uint32, write=True)
        with self.semaphores:
            word[0] = p.value if p.op == defs.DRM_EMUDEV_SEM_SET else (int(word[0]) + p.value) & 0xFFFFFFFF
            self.semaphores.notify_all()

    def timestamp(self, run: JobRun, memory: DeviceMemory, p: defs.drm_emudev_pkt_timestamp) -> None:
        memory.word(p.va, np.uint64, write=True)[0] = time.monotonic_ns()


_CONTROL: dict[str, Callable[[Engine, JobRun, DeviceMemory, defs.UapiStruct], None]] = {
    "NOP": lambda engine, run, memory, packet: None,
    "SEM_SIGNAL": Engine.signal_semaphore,
    "TIMESTAMP": Engine.timestamp,
}


class CommandStreamer:
    """Hands a job's packets to the engine threads (started on first use)."""

    def __init__(self, device_name: str, sem_grace_ns: int) -> None:
        self.device_name = device_name
        self.sem_grace_ns = sem_grace_ns  # how long a semaphore may block before the checker calls it stuck
        self.semaphores = threading.Condition()
        self.engines: dict[int, Engine] = {}
        self._lock = threading.Lock()

    def _engine(self, engine: int) -> Engine:
        with self._lock:
            if engine not in self.engines:
                self.engines[engine] = Engine(engine, self.device_name, self.semaphores, self.sem_grace_ns)
                self.engines[engine].start()
            return self.engines[engine]

    def start(self, job: Job, on_done: Callable[[JobRun], None]) -> JobRun:
        queues: defaultdict[int, list[Step]] = defaultdict(list)
        for step in job.program.steps:
            queues[step.engine].append(step)
        run = JobRun(job, len(queues), on_done)
        if not queues:
            on_done(run)
        for engine, steps in queues.items():
            self._engine(engine).inbox.put((run, steps))
        return run

    def wake_semaphore_waiters(self) -> None:
        with self.semaphores:
            self.semaphores.notify_all()

    def stop(self) -> None:
        with self._lock:
            engines = list(self.engines.values())
        for engine in engines:
            engine.inbox.put(None)
