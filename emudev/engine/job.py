"""A submitted job: its program, dependencies, fence, and what happened to it."""

from __future__ import annotations

import enum
import itertools
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
    _on_retire: list[Callable[[], object]] = field(default_factory=list)

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
        """Signal the fence (once) and let go of the BOs the job kept alive."""
        self.state = JobState.DONE
        self.end_ns = now_ns()
        if self.fence.signal(error):
            objects, self.objects = self.objects, []
            for obj in objects:
                obj.put("job")
            for callback in self._on_retire:
                callback()

    def on_retire(self, callback: Callable[[], object]) -> None:
        """Run `callback` once the job is done (at once if it already is)."""
        self._on_retire.append(callback)
        if self.fence.signaled:
            callback()

    def describe(self) -> str:
        client = self.context.file.client
        return f"job {self.seqno} of context {self.context.id} (file {self.context.file.id}, pid {client.tgid})"
