"""A submitted job: its program, dependencies, fence, and what happened to it."""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emudev.engine.program import Program
from emudev.sync.fence import DmaFence, now_ns
from emudev.uapi import defs

if TYPE_CHECKING:
    from emudev.engine.context import Context
    from emudev.gem.object import GemObject

_ids = itertools.count(1)


class JobState(enum.IntEnum):
    """drm_emudev_job_state, as JOB_STATUS reports it."""

    QUEUED = defs.DRM_EMUDEV_JOB_QUEUED
    RUNNING = defs.DRM_EMUDEV_JOB_RUNNING
    DONE = defs.DRM_EMUDEV_JOB_DONE


@dataclass(frozen=True)
class Fault:
    """An access the address space refused while the job ran."""

    engine: int
    packet: int
    va: int
    reason: str


@dataclass(eq=False)
class Job:
    context: Context
    seqno: int
    program: Program
    fence: DmaFence
    dependencies: list[DmaFence]
    objects: list[GemObject]
    id: int = field(default_factory=lambda: next(_ids))
    state: JobState = JobState.QUEUED
    fault: Fault | None = None
    submit_ns: int = field(default_factory=now_ns)
    start_ns: int = 0
    end_ns: int = 0
    on_engines: bool = False
    _on_retire: list[Callable[[], object]] = field(default_factory=list)
    _objects_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def error(self) -> int:
        return min(self.fence.status, 0)

    @property
    def ready(self) -> bool:
        return all(f.signaled for f in self.dependencies)

    def dependency_error(self) -> int:
        """The first failed dependency's error: the job does not run and carries it on."""
        return next((f.status for f in self.dependencies if f.status < 0), 0)

    def retire(self, error: int = 0) -> None:
        """Signal the fence (once) and, unless engines still hold the job, let go of its BOs."""
        self.state = JobState.DONE
        self.end_ns = now_ns()
        if self.fence.signal(error):
            if not self.on_engines:
                self._release_objects()
            for callback in self._on_retire:
                callback()

    def engines_left(self) -> None:
        """The engines are done with the job (a timeout or unplug may have signalled it before):
        only now may the memory they worked on go."""
        self.on_engines = False
        if self.fence.signaled:
            self._release_objects()

    def _release_objects(self) -> None:
        with self._objects_lock:
            objects, self.objects = self.objects, []
        for obj in objects:
            obj.put("job")

    def on_retire(self, callback: Callable[[], object]) -> None:
        """Run `callback` once the job is done (at once if it already is)."""
        self._on_retire.append(callback)
        if self.fence.signaled:
            callback()

    def describe(self) -> str:
        client = self.context.file.client
        return f"job {self.seqno} of context {self.context.id} (file {self.context.file.id}, pid {client.tgid})"
