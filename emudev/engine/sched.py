"""The scheduler, after drm_sched: one hardware ring fed from every context's queue.

A context's jobs run in order; the head job of a context is ready once its
dependencies have signalled. Among ready heads the highest priority wins, and within
a priority the file that has used the device least (fairness between files). A job
that runs past the timeout is failed with ETIME and the engines are reset; its
context is banned, and what it still had queued is cancelled with ECANCELED.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from dataclasses import dataclass

from emudev import check
from emudev.driver.fault_inject import FaultInjection
from emudev.engine.context import Context
from emudev.engine.job import Fault, Job, JobState
from emudev.engine.program import ENGINE_NAMES
from emudev.engine.streamer import CommandStreamer, JobRun
from emudev.sync.fence import now_ns, when_all
from emudev.sync.timer import deadlines

log = logging.getLogger("emudev.engine")

FAULT_LOG = 64
MAX_LEAD_NS = 2_000_000


@dataclass(frozen=True)
class FaultRecord:
    time_ns: int
    job: str
    fault: Fault


class Scheduler:
    def __init__(self, device_name: str, timeout_ms: int, inject: FaultInjection) -> None:
        self.device_name = device_name
        self.timeout_s = timeout_ms / 1000
        self.inject = inject
        self.streamer = CommandStreamer(device_name, timeout_ms * 1_000_000 // 2, inject)
        self.faults: deque[FaultRecord] = deque(maxlen=FAULT_LOG)
        self.completed = 0
        self.failed = 0
        self.running: Job | None = None
        self._current: JobRun | None = None
        self._active: list[Context] = []
        self._usage: dict[int, int] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- queueing -----------------------------------------------------------------------

    def push(self, job: Job) -> None:
        with self._cond:
            if self._stopped:
                job.retire(-errno.ENODEV)
                return
            context = job.context
            context.queue.append(job)
            if context not in self._active:
                self._active.append(context)
                self._usage.setdefault(context.file.id, min(self._usage.values(), default=0))
            self._ensure_thread()
        removers = when_all(job.dependencies, self._kick)
        job.on_retire(lambda: [remove() for remove in removers])
        self._kick()

    def _kick(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def cancel(self, context: Context, error: int) -> None:
        """Fail everything `context` has queued (not the running job) with `error`."""
        with self._cond:
            jobs = list(context.queue)
            context.queue.clear()
            if context in self._active:
                self._active.remove(context)
        for job in jobs:
            job.retire(error)

    def queued(self) -> int:
        with self._cond:
            return sum(len(c.queue) for c in self._active)

    # -- the ring -----------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"{self.device_name}-sched", daemon=True)
            self._thread.start()

    def _pick(self) -> Job | None:
        ready = [c for c in self._active if c.queue and c.queue[0].ready]
        if not ready:
            return None
        best = min(ready, key=lambda c: (-c.priority, self._usage.get(c.file.id, 0), c.queue[0].submit_ns))
        job = best.queue.popleft()
        if not best.queue:
            self._active.remove(best)
        return job

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (job := self._pick()) is None:
                    self._cond.wait()
                if self._stopped:
                    return
                self.running = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self.running = self._current = None

    def _run(self, job: Job) -> None:
        error = -errno.ECANCELED if job.context.banned else job.dependency_error()
        if error:
            self._finish(job, error)
            return
        if check.active is not None:
            check.active.job_starting(job)
        job.state = JobState.RUNNING
        job.start_ns = now_ns()
        if check.active is not None:
            check.active.job_started(job, int(self.timeout_s * 1e9))
        done = threading.Event()
        owner = threading.Lock()  # whoever takes it ends the job: the last engine, or the timeout

        def engines_done(run: JobRun) -> None:
            """On the engine thread that finished last: signalling here saves a thread hop."""
            if owner.acquire(blocking=False):
                if run.fault is not None:
                    job.fault = run.fault
                    self._record_fault(job, run.fault)
                self._finish(job, run.error)
            done.set()

        run = self._current = self.streamer.start(job, engines_done)
        if not done.wait(self.timeout_s) and owner.acquire(blocking=False):
            self._time_out(job, run)
        done.wait()  # after a timeout, the reset: engines drop the job after the packet they are in

    def _charge(self, job: Job) -> None:
        """Count the job's time against its file, but never more than MAX_LEAD_NS ahead of the
        least-served other active file: a job preempted on a busy host must not make its file
        wait for everyone else to catch up."""
        file_id = job.context.file.id
        with self._cond:
            charged = self._usage.get(file_id, 0) + now_ns() - job.start_ns
            floor = min((self._usage.get(c.file.id, 0) for c in self._active if c.file.id != file_id),
                        default=charged)
            self._usage[file_id] = min(charged, floor + MAX_LEAD_NS)

    def _time_out(self, job: Job, run: JobRun) -> None:
        log.warning("%s: %s timed out after %.0f ms; resetting the engines, banning its context",
                    self.device_name, job.describe(), self.timeout_s * 1000)
        run.abort(-errno.ETIME)
        self.streamer.wake_semaphore_waiters()
        job.context.banned = True
        self._finish(job, -errno.ETIME)
        self.cancel(job.context, -errno.ECANCELED)

    def _record_fault(self, job: Job, fault: Fault) -> None:
        self.faults.append(FaultRecord(now_ns(), job.describe(), fault))
        log.warning("%s: %s faulted: engine %s, packet %d, va %#x: %s", self.device_name, job.describe(),
                    ENGINE_NAMES[fault.engine], fault.packet, fault.va, fault.reason)

    def _finish(self, job: Job, error: int) -> None:
        if job.start_ns:
            self._charge(job)
        if error:
            self.failed += 1
        else:
            self.completed += 1
        delay_ms = self.inject.signal_delay_ms
        if delay_ms:
            deadlines.at(now_ns() + delay_ms * 1_000_000, lambda: self._retire(job, error))
        else:
            self._retire(job, error)

    @staticmethod
    def _retire(job: Job, error: int) -> None:
        job.retire(error)
        if check.active is not None:
            check.active.job_finished(job)

    # -- the device going away ---------------------------------------------------------

    def unplug(self) -> None:
        """Every pending fence signals ENODEV; the running job is stopped."""
        with self._cond:
            self._stopped = True
            contexts = list(self._active)
            running = self.running
            self._cond.notify_all()
        for context in contexts:
            self.cancel(context, -errno.ENODEV)
        if running is not None:
            running.retire(-errno.ENODEV)
        run = self._current
        if run is not None:
            run.abort(-errno.ENODEV)
            self.streamer.wake_semaphore_waiters()
