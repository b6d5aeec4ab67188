"""Contexts: a file's job queues, each a drm_sched entity with its own fence timeline."""

from __future__ import annotations

import collections
import itertools
import threading
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


class ContextTable:
    """A file's contexts by id (never 0, lowest free first, like the kernel's idr)."""

    def __init__(self) -> None:
        self._contexts: dict[int, Context] = {}
        self._lock = threading.Lock()

    def create(self, file: DrmFile, priority: int) -> Context:
        with self._lock:
            ctx_id = next(i for i in itertools.count(1) if i not in self._contexts)
            timeline = FenceContext("emudev", f"{file.device.name}-ctx{ctx_id}-file{file.id}")
            context = Context(ctx_id, file, priority, timeline)
            self._contexts[ctx_id] = context
            return context

    def lookup(self, ctx_id: int) -> Context | None:
        with self._lock:
            return self._contexts.get(ctx_id)

    def remove(self, ctx_id: int) -> Context | None:
        with self._lock:
            return self._contexts.pop(ctx_id, None)

    def all(self) -> list[Context]:
        with self._lock:
            return list(self._contexts.values())
