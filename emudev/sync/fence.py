"""dma_fence: a one-shot completion with an ordered place on a timeline (dma-fence.c).

A fence belongs to a context and has a seqno; fences of one context signal in seqno
order. It signals exactly once, optionally with an error, and records the
CLOCK_MONOTONIC time; callbacks run on the signalling thread, outside any lock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

from emudev import check

log = logging.getLogger("emudev.fence")

_contexts = itertools.count(1)
Callback = Callable[["DmaFence"], None]


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class DmaFence:
    __slots__ = ("_callbacks", "_lock", "context", "deadline_ns", "driver_name", "error", "seqno",
                 "timeline_name", "timestamp_ns")

    def __init__(self, context: int, seqno: int, driver_name: str = "emudev", timeline_name: str = "") -> None:
        self.context = context
        self.seqno = seqno
        self.driver_name = driver_name
        self.timeline_name = timeline_name
        self.error = 0
        self.timestamp_ns = 0
        self.deadline_ns = 0
        self._callbacks: list[Callback] | None = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "signalled" if self.signaled else "pending"
        return f"<fence {self.context}:{self.seqno} {self.timeline_name} {state} err={self.error}>"

    @property
    def signaled(self) -> bool:
        return self._callbacks is None

    @property
    def status(self) -> int:
        """dma_fence_get_status(): 0 pending, 1 signalled, the (negative) error if it failed."""
        if not self.signaled:
            return 0
        return self.error or 1

    def set_error(self, error: int) -> None:
        """dma_fence_set_error(): only before signalling, and only a negative errno."""
        if error >= 0:
            raise ValueError("a fence error is a negative errno")
        self.error = error

    def signal(self, error: int = 0) -> bool:
        """Signal once; a second call changes nothing and returns False (dma_fence_signal's -EINVAL)."""
        with self._lock:
            callbacks = self._callbacks
            if callbacks is None:
                return False
            if error:
                self.set_error(error)
            self.timestamp_ns = now_ns()
            self._callbacks = None
        if check.active is not None:
            check.active.order.fence_signaled(self)
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("fence callback failed on %r", self)
        return True

    def add_callback(self, cb: Callback) -> Callable[[], None] | None:
        """Call `cb(fence)` on signal; returns a remover, or None (and never calls) if already signalled."""
        with self._lock:
            if self._callbacks is None:
                return None
            self._callbacks.append(cb)

        def remove() -> None:
            with self._lock:
                if self._callbacks is not None and cb in self._callbacks:
                    self._callbacks.remove(cb)

        return remove

    def when_signaled(self, cb: Callback) -> Callable[[], None]:
        """Like add_callback, but an already signalled fence calls `cb` right away."""
        remove = self.add_callback(cb)
        if remove is None:
            cb(self)
            return lambda: None
        return remove

    def set_deadline(self, deadline_ns: int) -> None:
        """A hint (SYNC_IOC_SET_DEADLINE, WAIT_DEADLINE): kept, earliest wins, no effect on signalling."""
        if not self.signaled and (not self.deadline_ns or deadline_ns < self.deadline_ns):
            self.deadline_ns = deadline_ns

    def contained(self) -> list[DmaFence]:
        """The fences this one stands for (itself; arrays and chains override)."""
        return [self]


def when_all(fences: list[DmaFence], callback: Callable[[], None]) -> list[Callable[[], None]]:
    """Call `callback()` once every fence has signalled (at once if none is pending);
    returns the removers of the callbacks it registered."""
    remaining = [len(fences)]
    lock = threading.Lock()

    def one_done(_fence: DmaFence) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            callback()

    if not fences:
        callback()
    return [fence.when_signaled(one_done) for fence in fences]


class FenceContext:
    """dma_fence_context_alloc(1): a timeline of ordered seqnos."""

    def __init__(self, driver_name: str, timeline_name: str) -> None:
        self.id = next(_contexts)
        self.driver_name = driver_name
        self.timeline_name = timeline_name
        if check.active is not None:
            check.active.order.timeline_created(self.id)
        self._seqno = itertools.count(1)

    def fence(self) -> DmaFence:
        return DmaFence(self.id, next(self._seqno), self.driver_name, self.timeline_name)


def new_context() -> int:
    return next(_contexts)


def signaled_stub() -> DmaFence:
    """dma_fence_allocate_private_stub(ktime_get()): an already signalled fence of its own."""
    stub = DmaFence(new_context(), 0, "stub", "stub")
    stub.signal()
    return stub
