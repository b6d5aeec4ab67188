"""drm_syncobj: a container for a fence (binary) or a chain of points (timeline).

The object and its fence bookkeeping; the ioctls are in syncobj_ioctl.py and the
waits in wait.py. Waiters that need a fence to *appear* (WAIT_FOR_SUBMIT,
WAIT_AVAILABLE, eventfds) register a callback run whenever the fence changes,
as drm_syncobj's cb_list does.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from emudev import check
from emudev.sync.chain import FenceChain, find_seqno, last_signaled_point
from emudev.sync.fence import DmaFence, signaled_stub

_ids = itertools.count(1)


class NotSubmitted(Exception):
    """The asked point has no fence yet (drm_syncobj_find_fence's -EINVAL)."""


class Syncobj:
    def __init__(self) -> None:
        self.id = next(_ids)
        self._fence: DmaFence | None = None
        self._lock = threading.Lock()
        self._on_change: list[Callable[[], None]] = []
        self._refs = 0
        self.generation = 0  # bumped when replace() restarts the timeline, for the QUERY check
        self._on_release: list[Callable[[], None]] = []

    def get(self) -> Syncobj:
        """A reference from a handle, an opaque fd or an unclaimed ticket."""
        with self._lock:
            self._refs += 1
        return self

    def put(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
            callbacks, self._on_release = (self._on_release, []) if last else ([], self._on_release)
        for cb in callbacks:
            cb()

    def references(self) -> int:
        """Handles, opaque fds and unclaimed tickets that hold the syncobj."""
        with self._lock:
            return self._refs

    def on_release(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the last reference goes (pending eventfds let go of theirs)."""
        with self._lock:
            self._on_release.append(callback)

    def fence(self) -> DmaFence | None:
        with self._lock:
            return self._fence

    def replace(self, fence: DmaFence | None) -> None:
        """drm_syncobj_replace_fence(): binary semantics, also what RESET/SIGNAL do."""
        with self._lock:
            self._fence = fence
            self.generation += 1
        self._changed()

    def add_point(self, fence: DmaFence, point: int) -> None:
        """drm_syncobj_add_point(): a new chain head for `point` wrapping `fence`."""
        with self._lock:
            prev = self._fence
            self._fence = FenceChain(prev, fence, point)
        if check.active is not None and point and isinstance(prev, FenceChain):
            check.active.order.point_added(self, prev.seqno, point, "add_point")
        self._changed()
        if isinstance(prev, FenceChain):
            prev.walk()  # collect what has signalled, as drm_syncobj_add_point() does

    def find(self, point: int) -> DmaFence:
        """The fence for `point` (0: the current fence); NotSubmitted if there is none yet.
        A point already signalled and collected gives a signalled stub."""
        fence = self.fence()
        if fence is None:
            raise NotSubmitted
        found, result = find_seqno(fence, point)
        if not found:
            raise NotSubmitted
        return result if result is not None else signaled_stub()

    def query(self, last_submitted: bool) -> int:
        fence = self.fence()
        if not isinstance(fence, FenceChain):
            return 0
        return fence.seqno if last_submitted else last_signaled_point(fence)

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` after every fence change until the returned remover is called."""
        with self._lock:
            self._on_change.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._on_change:
                    self._on_change.remove(callback)

        return remove

    def _changed(self) -> None:
        with self._lock:
            callbacks = list(self._on_change)
        for cb in callbacks:
            cb()

    def waiters(self) -> int:
        with self._lock:
            return len(self._on_change)
