"""What the checkers know about jobs and fences: which job a fence belongs to, what it
waits for, and how to explain that as a chain of events."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from emudev.sync.fence import DmaFence

if TYPE_CHECKING:
    from emudev.engine.job import Job

_DEPTH = 4


def leaves(fence: DmaFence) -> list[DmaFence]:
    """The plain fences behind chains and arrays."""
    members = fence.contained()
    if members == [fence]:
        return [fence]
    return [leaf for member in members for leaf in leaves(member)]


class JobGraph:
    """Live jobs by their fence, so a fence found anywhere can be traced to its job."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[int, int], Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[(job.fence.context, job.fence.seqno)] = job

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop((job.fence.context, job.fence.seqno), None)

    def job_of(self, fence: DmaFence) -> Job | None:
        with self._lock:
            return self._jobs.get((fence.context, fence.seqno))

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def ordered_before(self, earlier: Job, later: Job) -> bool:
        """Whether `later` cannot start before `earlier` ends: same context (in order), or
        a dependency path of unsignalled fences from `later` back to `earlier`'s fence."""
        if earlier.fence.signaled:
            return True
        seen: set[int] = set()
        pending = [later]
        while pending:
            job = pending.pop()
            if job.context is earlier.context and job.seqno > earlier.seqno:
                return True
            for dependency in job.dependencies:
                for fence in leaves(dependency):
                    if fence is earlier.fence:
                        return True
                    source = self.job_of(fence)
                    if source is not None and id(source) not in seen and not fence.signaled:
                        seen.add(id(source))
                        pending.append(source)
        return False

    def explain(self, job: Job, depth: int = _DEPTH) -> list[str]:
        """The job and, indented, what it waited for, recursively."""
        lines = [f"{job.describe()}: {_timing(job)}"]
        if depth == 0:
            return lines
        for dependency in job.dependencies:
            for fence in leaves(dependency):
                source = self.job_of(fence)
                if source is None:
                    lines.append(f"  waits for {fence!r} ({fence.driver_name})")
                else:
                    lines.append(f"  waits for {fence!r}, the fence of")
                    lines += ["    " + line for line in self.explain(source, depth - 1)]
        return lines


def _timing(job: Job) -> str:
    state = job.state.name.lower()
    return (f"{state}, fence {job.fence!r}, submitted {job.submit_ns}, started {job.start_ns or '-'}, "
            f"ended {job.end_ns or '-'}")
