"""Fence-order invariants, checked as the device runs.

* fences of one timeline signal in seqno order;
* a timeline syncobj gets points in increasing order;
* no job starts before its dependencies have signalled;
* a QUERY never reports a timeline going backwards;
* a job whose dependency failed does not succeed (its fence carries the error on);
* no job fence stays unsignalled past the job timeout (plus slack) after its start.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from emudev.check.graph import JobGraph
from emudev.check.report import Report
from emudev.sync.fence import DmaFence
from emudev.sync.timer import deadlines

if TYPE_CHECKING:
    from emudev.engine.job import Job
    from emudev.sync.syncobj import Syncobj

SLACK_NS = 2_000_000_000


class FenceOrder:
    def __init__(self, report: Report, graph: JobGraph) -> None:
        self.report = report
        self.graph = graph
        self._timelines: dict[int, int] = {}
        self._queried: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def timeline_created(self, context: int) -> None:
        with self._lock:
            self._timelines[context] = 0

    def fence_signaled(self, fence: DmaFence) -> None:
        with self._lock:
            last = self._timelines.get(fence.context)
            if last is None:
                return
            self._timelines[fence.context] = max(last, fence.seqno)
        if fence.seqno < last:
            self.report.add("fence-order", f"{fence!r} signalled after seqno {last} of its timeline",
                            self._origin(fence))

    def _origin(self, fence: DmaFence) -> list[str]:
        job = self.graph.job_of(fence)
        return self.graph.explain(job) if job is not None else [repr(fence)]

    def point_added(self, syncobj: Syncobj, head: int, point: int, where: str) -> None:
        if point <= head:
            self.report.add("fence-order", f"{where}: timeline point {point} added to syncobj {syncobj.id} "
                            f"after point {head}; points must increase",
                            [f"syncobj {syncobj.id} head point {head}"])

    def queried(self, syncobj: Syncobj, generation: int, point: int, where: str) -> None:
        with self._lock:
            before = self._queried.get(syncobj.id)
            self._queried[syncobj.id] = (generation, point)
        if before is not None and before[0] == generation and point < before[1]:
            self.report.add("fence-order", f"{where}: QUERY of syncobj {syncobj.id} went back from point "
                            f"{before[1]} to {point}", [])

    def job_starting(self, job: Job) -> None:
        pending = [d for d in job.dependencies if not d.signaled]
        if pending:
            self.report.add("fence-order", f"{job.describe()} started before {len(pending)} dependencies signalled",
                            self.graph.explain(job))

    def job_started(self, job: Job, timeout_ns: int) -> None:
        def overdue() -> None:
            if not job.fence.signaled:
                self.report.add("fence-order", f"{job.describe()} is unsignalled {timeout_ns + SLACK_NS} ns after "
                                "it started, past the job timeout", self.graph.explain(job))

        job.on_retire(deadlines.at(job.start_ns + timeout_ns + SLACK_NS, overdue))

    def job_finished(self, job: Job) -> None:
        failed = job.dependency_error()
        if failed and job.fence.status > 0:
            self.report.add("fence-order", f"{job.describe()} ended with {job.fence.status} although a dependency "
                            f"failed with {failed}", self.graph.explain(job))
