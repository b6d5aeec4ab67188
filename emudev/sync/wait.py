"""SYNCOBJ_WAIT and SYNCOBJ_TIMELINE_WAIT as deferred replies (drm_syncobj_array_wait_timeout).

The fences are snapshotted at entry. Each entry is then watched by a fence
callback, or — with WAIT_FOR_SUBMIT / WAIT_AVAILABLE and no fence yet — by the
syncobj's change callbacks; the absolute deadline sits on the shared timer. The
first of "condition met", deadline (-ETIME) and interrupt (-EINTR) completes the
wait; every registration is undone then.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from emudev.drm.completion import Completion
from emudev.sync.fence import DmaFence, now_ns
from emudev.sync.syncobj import NotSubmitted, Syncobj
from emudev.sync.timer import deadlines
from emudev.uapi import defs

NO_INDEX = 0xFFFFFFFF
WAIT_ALL = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
FOR_SUBMIT = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
AVAILABLE = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE


@dataclass
class _Entry:
    syncobj: Syncobj
    point: int
    fence: DmaFence | None = None
    watched: bool = False
    undo: list[Callable[[], None]] = field(default_factory=list)


class SyncobjWait:
    def __init__(self, syncobjs: list[Syncobj], points: list[int], flags: int,
                 set_first: Callable[[int], None]) -> None:
        self.flags = flags
        self.entries = [_Entry(s, p) for s, p in zip(syncobjs, points, strict=True)]
        self.set_first = set_first
        self.first = NO_INDEX
        self.done = Completion()
        self._lock = threading.Lock()

    def start(self, timeout_ns: int, deadline_ns: int | None) -> int | Completion:
        """Snapshot and check at entry; 0 or -errno now, or a Completion for later.

        first_signaled is written only when the wait succeeds, as drm_syncobj_array_wait()
        does: a failed wait copies the caller's own value back."""
        result = self._start(timeout_ns, deadline_ns)
        if result == 0:
            self.set_first(self.first)
        elif isinstance(result, Completion):
            result.on_done(lambda r: self.set_first(self.first) if r == 0 else None)
        return result

    def _start(self, timeout_ns: int, deadline_ns: int | None) -> int | Completion:
        first = NO_INDEX
        ready = 0
        for i, entry in enumerate(self.entries):
            try:
                entry.fence = entry.syncobj.find(entry.point)
            except NotSubmitted:
                if not self.flags & (FOR_SUBMIT | AVAILABLE):
                    return -errno.EINVAL
                continue
            if self._entry_done(entry):
                if ready == 0:
                    first = i
                ready += 1
        self.first = first
        if ready == len(self.entries) or (ready and not self.flags & WAIT_ALL):
            return 0
        if deadline_ns is not None:
            for entry in self.entries:
                if entry.fence is not None:
                    entry.fence.set_deadline(deadline_ns)
        if timeout_ns <= now_ns():
            return 0 if self._check(watch=False) else -errno.ETIME
        self._watch()
        self.done.on_cleanup(self._unwatch)
        self.done.on_cleanup(deadlines.at(timeout_ns, lambda: self.done.complete(-errno.ETIME)))
        self._evaluate()
        return self.done

    def _entry_done(self, entry: _Entry) -> bool:
        return entry.fence is not None and (bool(self.flags & AVAILABLE) or entry.fence.signaled)

    def _watch(self) -> None:
        for entry in self.entries:
            if entry.fence is None:
                entry.undo.append(entry.syncobj.on_change(lambda e=entry: self._submitted(e)))

    def _unwatch(self) -> None:
        for entry in self.entries:
            for undo in entry.undo:
                undo()
            entry.undo.clear()

    def _submitted(self, entry: _Entry) -> None:
        """A fence appeared on the syncobj: take it if it covers the point (syncobj_wait_syncobj_func)."""
        with self._lock:
            if entry.fence is not None:
                return
            try:
                entry.fence = entry.syncobj.find(entry.point)
            except NotSubmitted:
                return
        self._evaluate()

    def _evaluate(self) -> None:
        if self._check(watch=True):
            self.done.complete(0)

    def _check(self, watch: bool) -> bool:
        """One pass of the kernel's wait loop: is the wait over? Sets first_signaled as it does."""
        ready = 0
        with self._lock:
            for i, entry in enumerate(self.entries):
                if entry.fence is None:
                    continue
                if watch and not self._entry_done(entry) and not entry.watched and not self.done.finished:
                    entry.watched = True
                    remove = entry.fence.add_callback(lambda _f: self._evaluate())
                    if remove is not None:
                        entry.undo.append(remove)
                if self._entry_done(entry):
                    if not self.flags & WAIT_ALL:
                        self.first = i
                        return True
                    ready += 1
        return ready == len(self.entries)
