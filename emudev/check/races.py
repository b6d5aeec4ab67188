"""Races: accesses to the same BO bytes that no fence orders.

The device knows from each validated stream which bytes a job reads and writes. A new
job's access that overlaps an unfinished job's access, where either writes, must be
ordered after it: same context, or a dependency path. The CPU's accesses are seen where
they reach the device: pages of a device-fd mapping read in or written back, and the
begin/end of CPU access (BO_PREP/BO_FINI).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emudev.check.graph import JobGraph
from emudev.check.report import Report

if TYPE_CHECKING:
    from emudev.drm.file import DrmFile
    from emudev.engine.job import Job
    from emudev.gem.object import GemObject


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of one BO, read or written by a job, named for messages."""

    obj_id: int
    start: int
    end: int
    write: bool
    what: str

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


class Races:
    def __init__(self, report: Report, graph: JobGraph) -> None:
        self.report = report
        self.graph = graph
        self._spans: dict[int, list[tuple[Job, Span]]] = {}
        self._cpu_open: dict[tuple[int, int], bool] = {}
        self._lock = threading.Lock()

    def job_submitted(self, job: Job, spans: list[Span]) -> None:
        with self._lock:
            for span in spans:
                live = [(j, s) for j, s in self._spans.get(span.obj_id, []) if not j.fence.signaled]
                conflicts = [(j, s) for j, s in live if j is not job and (s.write or span.write)
                             and s.overlaps(span.start, span.end)]
                live.append((job, span))
                self._spans[span.obj_id] = live
                for other, theirs in conflicts:
                    if not self.graph.ordered_before(other, job):
                        self._job_race(other, theirs, job, span)

    def _job_race(self, first: Job, theirs: Span, second: Job, ours: Span) -> None:
        both = theirs.write and ours.write
        what = "two jobs write" if both else ("a job reads what another still writes" if theirs.write
                                             else "a job writes what another still reads")
        start, end = max(theirs.start, ours.start), min(theirs.end, ours.end)
        self.report.add("race", f"{what} without a dependency: BO {ours.obj_id} bytes [{start:#x}, {end:#x}), "
                        f"{theirs.what} of {first.describe()} and {ours.what} of {second.describe()}",
                        [*self.graph.explain(first, 1), *self.graph.explain(second, 1)])

    def _pending(self, obj: GemObject, start: int, end: int, writers_only: bool) -> list[tuple[Job, Span]]:
        with self._lock:
            return [(j, s) for j, s in self._spans.get(obj.id, []) if not j.fence.signaled
                    and (s.write or not writers_only) and s.overlaps(start, end)]

    def cpu_read(self, file: DrmFile, obj: GemObject, start: int, end: int) -> None:
        """A page of a device-fd mapping is read in: a job still writing it makes that a race."""
        for job, span in self._pending(obj, start, end, writers_only=True):
            self.report.add("race", f"CPU read of BO {obj.id} bytes [{start:#x}, {end:#x}) by pid "
                            f"{file.client.tgid} before waiting for {job.describe()}, which writes them "
                            f"({span.what}): wait for its fence or BO_PREP first", self.graph.explain(job, 1))

    def cpu_write(self, file: DrmFile, obj: GemObject, start: int, end: int) -> None:
        """Dirty pages reach the BO: a job still using them makes that a race."""
        for job, span in self._pending(obj, start, end, writers_only=False):
            self.report.add("race", f"CPU write of BO {obj.id} bytes [{start:#x}, {end:#x}) by pid "
                            f"{file.client.tgid} while {job.describe()} uses them ({span.what})",
                            self.graph.explain(job, 1))

    def cpu_access_begun(self, file: DrmFile, obj: GemObject) -> None:
        with self._lock:
            self._cpu_open[(file.id, obj.id)] = True

    def cpu_access_ended(self, file: DrmFile, obj: GemObject) -> None:
        with self._lock:
            self._cpu_open.pop((file.id, obj.id), None)

    def cpu_touched(self, file: DrmFile, obj: GemObject) -> bool:
        """Whether `file` mapped and touched `obj` outside a PREP/FINI bracket."""
        with self._lock:
            return (file.id, obj.id) in self._cpu_open

    def forget_file(self, file: DrmFile) -> None:
        with self._lock:
            for key in [k for k in self._cpu_open if k[0] == file.id]:
                del self._cpu_open[key]
