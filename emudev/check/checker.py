"""The checkers together, and the hooks the device calls (through `emudev.check.active`)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.check.deadlock import Deadlocks, Word
from emudev.check.fence_order import FenceOrder
from emudev.check.graph import JobGraph
from emudev.check.races import Races, Span
from emudev.check.report import Report

if TYPE_CHECKING:
    from emudev.drm.file import DrmFile
    from emudev.engine.job import Job
    from emudev.engine.program import Step
    from emudev.gem.object import GemObject

# Errors that say the caller got the uapi wrong (as opposed to timeouts, signals, device loss).
MISUSE = frozenset({errno.EINVAL, errno.ENOENT, errno.EFAULT, errno.EBADF, errno.EACCES, errno.EPERM, errno.ENOTTY})


class Checker:
    def __init__(self) -> None:
        self.report = Report()
        self.notes = Report(logging.INFO)
        self.graph = JobGraph()
        self.order = FenceOrder(self.report, self.graph)
        self.deadlocks = Deadlocks(self.report, self.graph)
        self.races = Races(self.report, self.graph)
        self._closed: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()

    # -- jobs -----------------------------------------------------------------------------

    def job_submitted(self, job: Job) -> None:
        self.graph.add(job)
        file = job.context.file
        spans = []
        for step in job.program.steps:
            for access in step.accesses:
                found = file.vm.translate(access.va, access.length)
                if found is not None:
                    spans.append(Span(found.obj.id, found.offset, found.offset + access.length, access.write,
                                      f"packet {step.index} ({step.name} {access.what})"))
                    if not access.write and self.races.cpu_touched(file, found.obj):
                        self._unsynced(job, found.obj, step)
        self.races.job_submitted(job, spans)
        self.deadlocks.job_submitted(job)

    def _unsynced(self, job: Job, obj: GemObject, step: Step) -> None:
        self.report.add("cpu-access", f"{job.describe()} reads BO {obj.id} (packet {step.index}, {step.name}) "
                        f"which pid {job.context.file.client.tgid} accessed through its device-fd mapping "
                        "without ending the access with BO_FINI: the device may not see what the CPU wrote", [])

    def job_starting(self, job: Job) -> None:
        self.order.job_starting(job)

    def job_started(self, job: Job, timeout_ns: int) -> None:
        self.order.job_started(job, timeout_ns)

    def job_finished(self, job: Job) -> None:
        self.order.job_finished(job)
        self.graph.remove(job)

    def semaphore_blocked(self, job: Job, step: Step, word: Word, remaining: list[Step],
                          still_blocked: Callable[[], bool], grace_ns: int) -> None:
        self.deadlocks.semaphore_blocked(job, step, word, remaining, still_blocked, grace_ns)

    # -- CPU access -------------------------------------------------------------------------

    def cpu_read(self, file: DrmFile, obj: GemObject, start: int, end: int) -> None:
        self.races.cpu_access_begun(file, obj)
        self.races.cpu_read(file, obj, start, end)

    def cpu_write(self, file: DrmFile, obj: GemObject, start: int, end: int) -> None:
        self.races.cpu_write(file, obj, start, end)

    def cpu_access_ended(self, file: DrmFile, obj: GemObject) -> None:
        self.races.cpu_access_ended(file, obj)

    # -- misuse of the uapi -----------------------------------------------------------------------

    def handle_closed(self, file: DrmFile, handle: int, what: str) -> None:
        with self._lock:
            self._closed[(file.id, handle)] = what

    def handle_reused(self, file: DrmFile, handle: int) -> None:
        with self._lock:
            self._closed.pop((file.id, handle), None)

    def ioctl_failed(self, file: DrmFile, name: str, error: int, reason: str, handles: list[int]) -> None:
        if error not in MISUSE:
            return
        client = file.client
        place = f"{name} from pid {client.tgid} ({client.comm}), file {file.id}"
        with self._lock:
            stale = [(h, self._closed[(file.id, h)]) for h in handles if (file.id, h) in self._closed]
        kind = "double-close" if name == "DRM_IOCTL_GEM_CLOSE" else "use-after-close"
        for handle, what in stale:
            self.notes.add(kind, f"{place}: handle {handle} was already closed ({what})")
        self.notes.add("uapi-error", f"{place}: {errno.errorcode.get(error, error)}: {reason}")

    def file_released(self, file: DrmFile, dmabuf_fds: list[tuple[int, int]]) -> None:
        """The client closed its device file; dma-bufs it still holds may be leaks (or handed on:
        a note, not a violation)."""
        self.races.forget_file(file)
        with self._lock:
            for key in [k for k in self._closed if k[0] == file.id]:
                del self._closed[key]
        if dmabuf_fds and os.path.exists(f"/proc/{file.client.tgid}"):
            listed = ", ".join(f"fd {fd} (BO {obj})" for fd, obj in dmabuf_fds)
            self.notes.add("leak", f"pid {file.client.tgid} ({file.client.comm}) closed its device file but "
                            f"still holds dma-buf descriptors: {listed}", [])

    def text(self) -> str:
        """debug/checks: the violations, then the notes on failed calls."""
        violations, notes = self.report.violations(), self.notes.violations()
        return (f"violations: {len(violations)}\n{self.report.text()}"
                f"notes: {len(notes)}\n{self.notes.text()}")
