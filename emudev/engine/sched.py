"""The scheduler, after drm_sched: one hardware ring fed from every context's queue.

A context's jobs run in order; the head job of a context is ready once its
dependencies have signalled. Among ready heads the highest priority wins, and within
a priority the file that has used the device least (fairness between files). A job
that runs past the timeout is failed with ETIME and the engines are reset; its
context is banned, and what it still had queued is cancelled with ECANCELED.

The scheduler has no thread of its own: whoever makes a job runnable (SUBMIT, a
dependency's signal, the end of the previous job) starts it, and the engine thread
that finishes a job signals its fence. A job with work for the engines goes on the
ring inside SUBMIT, so that its engine thread is already waking while the reply goes
out. An empty job has no engine to wake: its completion goes to `defer`, which the
daemon points at the FUSE worker's after-reply work, and happens while the caller is
being answered (a NOP job's SUBMIT → fence went from 3.2 to 2.5 round trips).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass(eq=False)
class _OnRing:
    """The job on the ring. Whoever takes `owner` ends it: the last engine, the timeout or
    the unplug; the ring frees only when the engines are done with it (the reset)."""

    job: Job
    run: JobRun | None = None
    owner: threading.Lock = field(default_factory=threading.Lock)
    cancel_timeout: Callable[[], None] = lambda: None


def _now(work: Callable[[], object]) -> None:
    work()


class Scheduler:
    def __init__(self, device_name: str, timeout_ms: int, inject: FaultInjection) -> None:
        self.device_name = device_name
        self.timeout_ns = timeout_ms * 1_000_000
        self.inject = inject
        self.streamer = CommandStreamer(device_name, self.timeout_ns // 2, inject)
        self.faults: deque[FaultRecord] = deque(maxlen=FAULT_LOG)
        self.completed = 0
        self.failed = 0
        self._ring: _OnRing | None = None
        self._active: list[Context] = []
        self._usage: dict[int, int] = {}
        self._lock = threading.Lock()
        self._dispatching = False
        self._again = False
        self._stopped = False
        self.defer: Callable[[Callable[[], object]], None] = _now

    @property
    def running(self) -> Job | None:
        ring = self._ring
        return ring.job if ring is not None else None

    # -- queueing -----------------------------------------------------------------------

    def push(self, job: Job) -> None:
        with self._lock:
            if self._stopped:
                stopped = True
            else:
                stopped = False
                context = job.context
                context.queue.append(job)
                if context not in self._active:
                    self._active.append(context)
                    self._usage.setdefault(context.file.id, min(self._usage.values(), default=0))
        if stopped:
            job.retire(-errno.ENODEV)
            return
        self._watch_dependencies(job)
        if job.program.work:
            self._dispatch()
        else:
            self.defer(self._dispatch)

    def _watch_dependencies(self, job: Job) -> None:
        """Look for a ready job again when the last pending dependency of `job` signals.
        Signalled ones need no callback: the dispatch that follows the push sees them."""
        pending = [fence for fence in job.dependencies if not fence.signaled]
        if pending:
            removers = when_all(pending, self._dispatch)
            job.on_retire(lambda: [remove() for remove in removers])

    def cancel(self, context: Context, error: int) -> None:
        """Fail everything `context` has queued (not the running job) with `error`."""
        with self._lock:
            jobs = list(context.queue)
            context.queue.clear()
            if context in self._active:
                self._active.remove(context)
        for job in jobs:
            job.retire(error)

    def queued(self) -> int:
        with self._lock:
            return sum(len(c.queue) for c in self._active)

    # -- the ring -----------------------------------------------------------------------

    def _pick(self) -> Job | None:
        ready = [c for c in self._active if c.queue and c.queue[0].ready]
        if not ready:
            return None
        best = min(ready, key=lambda c: (-c.priority, self._usage.get(c.file.id, 0), c.queue[0].submit_ns))
        job = best.queue.popleft()
        if not best.queue:
            self._active.remove(best)
        return job

    def _dispatch(self, *_: object) -> None:
        """Put the next ready job on a free ring. One caller at a time does the work; a call
        that arrives meanwhile makes it look again, so completions inside a start (empty
        jobs) loop here instead of recursing."""
        with self._lock:
            if self._dispatching:
                self._again = True
                return
            self._dispatching = True
        while True:
            with self._lock:
                self._again = False
                job = None if self._stopped or self._ring is not None else self._pick()
                if job is not None:
                    self._ring = ring = _OnRing(job)
                elif not self._again:
                    self._dispatching = False
                    return
            if job is not None:
                self._start(ring)

    def _start(self, ring: _OnRing) -> None:
        job = ring.job
        error = -errno.ECANCELED if job.context.banned else job.dependency_error()
        if error:
            ring.owner.acquire()
            self._finish(job, error)
            self._free_ring()
            return
        if check.active is not None:
            check.active.job_starting(job)
        job.state = JobState.RUNNING
        job.start_ns = now_ns()
        if check.active is not None:
            check.active.job_started(job, self.timeout_ns)
        if not job.program.work:  # nothing for an engine: done at once, no timeout to arm
            ring.owner.acquire()
            self._finish(job, 0)
            self._free_ring()
            return
        ring.cancel_timeout = deadlines.at(job.start_ns + self.timeout_ns, lambda: self._time_out(ring))
        job.on_engines = True
        ring.run = self.streamer.start(job, lambda run: self._engines_done(ring, run))

    def _engines_done(self, ring: _OnRing, run: JobRun) -> None:
        """On the engine thread that finished last: signalling here saves a thread hop. The
        timeout is cancelled after the signal: should it fire meanwhile, it finds the job taken. The
        ring is freed whatever happens, or the device would take no job any more."""
        try:
            if ring.owner.acquire(blocking=False):
                if run.fault is not None:
                    ring.job.fault = run.fault
                    self._record_fault(ring.job, run.fault)
                self._finish(ring.job, run.error)
            ring.cancel_timeout()
            ring.job.engines_left()
        finally:
            self._free_ring()

    def _free_ring(self) -> None:
        with self._lock:
            self._ring = None
        self._dispatch()

    def _time_out(self, ring: _OnRing) -> None:
        if not ring.owner.acquire(blocking=False):
            return
        job = ring.job
        log.warning("%s: %s timed out after %d ms; resetting the engines, banning its context",
                    self.device_name, job.describe(), self.timeout_ns // 1_000_000)
        if ring.run is not None:
            ring.run.abort(-errno.ETIME)
        job.context.banned = True
        self._finish(job, -errno.ETIME)
        self.cancel(job.context, -errno.ECANCELED)

    def _record_fault(self, job: Job, fault: Fault) -> None:
        self.faults.append(FaultRecord(now_ns(), job.describe(), fault))
        log.warning("%s: %s faulted: engine %s, packet %d, va %#x: %s", self.device_name, job.describe(),
                    ENGINE_NAMES[fault.engine], fault.packet, fault.va, fault.reason)

    def _finish(self, job: Job, error: int) -> None:
        """Signal first, so that waiters wake as early as can be, then charge the file: the
        ring is still taken, so no job is picked before the charge counts."""
        ended_ns = now_ns()
        if error:
            self.failed += 1
        else:
            self.completed += 1
        delay_ms = self.inject.signal_delay_ms
        if delay_ms:
            deadlines.at(ended_ns + delay_ms * 1_000_000, lambda: self._retire(job, error))
        else:
            self._retire(job, error)
        if job.start_ns:
            self._charge(job, ended_ns - job.start_ns)

    @staticmethod
    def _retire(job: Job, error: int) -> None:
        job.retire(error)
        if check.active is not None:
            check.active.job_finished(job)

    def _charge(self, job: Job, ran_ns: int) -> None:
        """Count `ran_ns`, the job's time, against its file, but never more than MAX_LEAD_NS ahead of the
        least-served other active file: a job preempted on a busy host must not make its file
        wait for everyone else to catch up."""
        file_id = job.context.file.id
        with self._lock:
            charged = self._usage.get(file_id, 0) + ran_ns
            floor = min((self._usage.get(c.file.id, 0) for c in self._active if c.file.id != file_id),
                        default=charged)
            self._usage[file_id] = min(charged, floor + MAX_LEAD_NS)

    # -- the device going away ---------------------------------------------------------

    def unplug(self) -> None:
        """Every pending fence signals ENODEV; the running job is stopped."""
        with self._lock:
            self._stopped = True
            contexts = list(self._active)
            ring = self._ring
        for context in contexts:
            self.cancel(context, -errno.ENODEV)
        if ring is not None and ring.owner.acquire(blocking=False):
            if ring.run is not None:
                ring.run.abort(-errno.ENODEV)
            self._retire(ring.job, -errno.ENODEV)
