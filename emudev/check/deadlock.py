"""Deadlocks: waits that nothing can ever satisfy, found when they form.

The device resolves each by the kernel's rules (the job timeout, the wait's own
timeout); the detector says why it happened and who is in the cycle.

* A SEM_WAIT whose word no packet will signal: not the rest of its own job, and not a
  queued job either (reported if it still blocks after a grace period, as the CPU may
  write the word) — or only a queued job, which cannot run before the waiting job
  leaves the ring: a cycle (waiter → signaller → ring → waiter), reported at once.
* A SYNCOBJ wait with WAIT_FOR_SUBMIT on a point that only the waiting client could
  submit, while its only thread is the one waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.check.graph import JobGraph
from emudev.check.report import Report
from emudev.sync.fence import now_ns
from emudev.sync.timer import deadlines

if TYPE_CHECKING:
    from emudev.drm.file import DrmFile
    from emudev.engine.job import Job
    from emudev.engine.program import Step
    from emudev.sync.syncobj import Syncobj

Word = tuple[int, int]  # (BO id, byte offset)


class Deadlocks:
    def __init__(self, report: Report, graph: JobGraph) -> None:
        self.report = report
        self.graph = graph
        self._blocked: dict[Word, tuple[Job, Step]] = {}
        self._cycles: set[int] = set()
        self._lock = threading.Lock()

    def job_submitted(self, job: Job) -> None:
        """A new job that signals a word a running job waits on closes a cycle: the waiter holds
        the ring the signaller needs (and may be what the signaller waits for)."""
        with self._lock:
            blocked = dict(self._blocked)
        for step in job.program.steps:
            for word, (waiter, wait_step) in blocked.items():
                if not waiter.fence.signaled and _signals(job, step, word):
                    self._cycle(waiter, wait_step, word, [job])

    def semaphore_blocked(self, job: Job, step: Step, word: Word, remaining: list[Step],
                          still_blocked: Callable[[], bool], grace_ns: int) -> None:
        """`job`'s engine waits on `word`; `remaining` are the job's packets not yet run. A wait
        only the CPU could end is reported if it still blocks after `grace_ns`."""
        if any(_signals(job, s, word) for s in remaining):
            return
        signallers = [other for other in self.graph.jobs()
                      if other is not job and not other.fence.signaled and other.start_ns == 0
                      and any(_signals(other, s, word) for s in other.program.steps)]
        with self._lock:
            self._blocked[word] = (job, step)
        job.on_retire(lambda: self._unblock(word, job))
        if signallers:
            self._cycle(job, step, word, signallers)
        else:
            place = _place(job, step, word)

            def report() -> None:
                if still_blocked() and not job.fence.signaled and not self._in_cycle(job):
                    self.report.add("deadlock", f"{place}: no packet of this job or of any queued job signals the "
                                    f"word, and nothing wrote it for {grace_ns // 1_000_000} ms",
                                    self.graph.explain(job))

            job.on_retire(deadlines.at(now_ns() + grace_ns, report))

    def _unblock(self, word: Word, job: Job) -> None:
        with self._lock:
            if self._blocked.get(word, (None,))[0] is job:
                del self._blocked[word]

    def _in_cycle(self, job: Job) -> bool:
        with self._lock:
            return id(job) in self._cycles

    def _cycle(self, waiter: Job, step: Step, word: Word, signallers: list[Job]) -> None:
        with self._lock:
            if id(waiter) in self._cycles:
                return
            self._cycles.add(id(waiter))
        waiter.on_retire(lambda: self._cycles.discard(id(waiter)))
        place = _place(waiter, step, word)
        members = [f"{waiter.describe()} holds the ring and waits at {place}"]
        for other in signallers:
            why = ("and also waits for its fence" if self.graph.ordered_before(waiter, other)
                   else "but cannot start while the ring is held")
            members.append(f"-> {other.describe()} would signal the word, {why}")
        members.append(f"-> back to {waiter.describe()}: it ends only when the job timeout resets the engines")
        self.report.add("deadlock", f"cycle: {place} waits for a job that cannot run before it ends", members)

    def wait_for_submit(self, file: DrmFile, missing: list[Syncobj], threads: int) -> None:
        """A CPU wait needs points submitted first; can anyone else submit them?"""
        if threads != 1:
            return
        alone = [s for s in missing if s.references() == 1]
        if len(alone) == len(missing):
            client = file.client
            self.report.add("deadlock", f"pid {client.tgid} ({client.comm}) waits with WAIT_FOR_SUBMIT for "
                            f"syncobjs {[s.id for s in alone]} that only it holds, from its only thread: nothing "
                            "can submit them before the wait times out", [])


def _place(job: Job, step: Step, word: Word) -> str:
    return f"packet {step.index} (SEM_WAIT on BO {word[0]} + {word[1]:#x}) of {job.describe()}"


def _signals(job: Job, step: Step, word: Word) -> bool:
    if step.name != "SEM_SIGNAL":
        return False
    found = job.context.file.vm.translate(step.packet.va, 4)
    return found is not None and (found.obj.id, found.offset) == word
