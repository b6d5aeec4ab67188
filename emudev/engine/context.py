"""Contexts: a file's job queues, each a drm_sched entity with its own fence timeline."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emudev.sync.fence import FenceContext
from emudev.uapi import defs

if TYPE_CHECKING:
    from emudev.drm.file import DrmFile
    from emudev.engine.job import Job


@dataclass(eq=False)
class Context:
    id: int
    file: DrmFile
    priority: int
    timeline: FenceContext
    queue: collections.deque[Job] = field(default_factory=collections.deque)
    history: collections.OrderedDict[int, Job] = field(default_factory=collections.OrderedDict)
    banned: bool = False
    closed: bool = False
    submitted: int = 0

    def next_seqno(self) -> int:
        self.submitted += 1
        return self.submitted

    def remember(self, job: Job) -> None:
        self.history[job.seqno] = job
        while len(self.history) > defs.DRM_EMUDEV_JOB_HISTORY:
            self.history.popitem(last=False)


def create_context(file: DrmFile, priority: int) -> Context:
    """A new context in `file`, at the lowest free id (never 0), as the kernel's idr hands out."""
    context = Context(0, file, priority, FenceContext("emudev", ""))
    context.id = file.contexts.insert(context)
    context.timeline.timeline_name = f"{file.device.name}-ctx{context.id}-file{file.id}"
    return context
