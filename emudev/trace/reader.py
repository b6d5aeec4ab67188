"""MOUNT/debug/trace: a stream of JSON lines, one per request, for as long as it is open.

Opening it switches tracing on, closing the last reader switches it off. A read with
nothing to return is a deferred reply (no daemon thread waits), answered when events
come, interrupted by a signal (EINTR) or ended by unplugging (end of file). Each
reader has a queue of its own: several readers each get every event, and one that
falls behind loses events, counted by a {"type": "lost", "count": N} line, rather than
holding the device up. The reader's own process is not traced to it.
"""

from __future__ import annotations

import errno
import select
import stat
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.drm.completion import Completion
from emudev.drm.file import thread_group
from emudev.fuse import Deferred, Request
from emudev.nodes.defer import park
from emudev.nodes.tree import DeviceFile, OpenFile
from emudev.trace.capture import Event

if TYPE_CHECKING:
    from emudev.nodes.defer import PendingWaits
    from emudev.nodes.services import MountServices
    from emudev.trace.tracer import Traced, Tracer

QUEUE_LIMIT = 8192
# Lines one read encodes at most (a read returns at most its size; the rest waits for the next).
_BATCH_BYTES = 256


class TraceReader(OpenFile):
    direct_io = True

    def __init__(self, tracer: Tracer, tgid: int, pending: PendingWaits | None,
                 notify_poll: Callable[[int], None] | None, limit: int = QUEUE_LIMIT) -> None:
        self.tgid = tgid
        self.limit = limit
        self._tracer = tracer
        self._pending = pending
        self._notify_poll = notify_poll
        self._lock = threading.Lock()
        self._queue: deque[Traced] = deque()
        self._lost = 0
        self._partial = b""
        self._busy = False
        self._parked: Completion | None = None
        self._poll_kh: int | None = None
        self._closed = False
        tracer.attach(self)

    # -- the tracer's side ---------------------------------------------------------------------------

    def push(self, event: Traced) -> bool:
        """Queue `event`; True if a read or poll is waiting for it (the pump must run)."""
        if event.tgid == self.tgid:
            return False
        with self._lock:
            if len(self._queue) >= self.limit:
                self._lost += 1
                return False
            if self._lost:
                self._queue.append(_lost(self._lost))
                self._lost = 0
            self._queue.append(event)
            return self._parked is not None or self._poll_kh is not None

    def deliver(self) -> None:
        """On the pump thread: complete a waiting read, wake a waiting poll."""
        with self._lock:
            if not self._ready():
                return
            parked, self._parked = self._parked, None
            kh, self._poll_kh = self._poll_kh, None
        if parked is not None:
            parked.complete(0)
        if kh is not None and self._notify_poll is not None:
            self._notify_poll(kh)

    # -- the reader's side ---------------------------------------------------------------------------

    def _ready(self) -> bool:
        return bool(self._queue or self._partial or self._lost)

    def read(self, req: Request, offset: int, size: int) -> bytes | Deferred:
        with self._lock:
            if self._busy:
                raise OSError(errno.EBUSY, "another read of this trace file is in progress")
            self._busy = True
            wait = not self._ready() and not self._closed
            parked = self._parked = Completion() if wait else None
        if parked is None:
            return self._take(size)
        return park(req, parked, self._pending, lambda result: self._answer(req, size, result))

    def _answer(self, req: Request, size: int, result: int) -> None:
        if result == -errno.EINTR:
            with self._lock:
                self._busy = False
                self._parked = None
            req.reply_error(errno.EINTR)
            return
        if result < 0:  # unplugged or closed: end of file
            with self._lock:
                self._closed = True
        req.reply(self._take(size))

    def _take(self, size: int) -> bytes:
        """Up to `size` bytes of whole and split lines; ends the read in progress."""
        with self._lock:
            count = min(len(self._queue), size // _BATCH_BYTES + 1)
            events = [self._queue.popleft() for _ in range(count)]
            if not self._queue and self._lost:
                events.append(_lost(self._lost))
                self._lost = 0
        data = b"".join(event.line() for event in events)
        with self._lock:
            data = self._partial + data
            self._partial = data[size:]
            self._busy = False
            self._parked = None
        return data[:size]

    def poll(self, req: Request, kh: int | None, events: int) -> int:
        with self._lock:
            if self._ready() or self._closed:
                return select.POLLIN
            if kh is not None:
                self._poll_kh = kh
        return 0

    def release(self) -> None:
        self._tracer.detach(self)
        with self._lock:
            self._closed = True
            parked, self._parked = self._parked, None
        if parked is not None:
            parked.complete(-errno.ECANCELED)


def _lost(count: int) -> Event:
    return Event(0, {"type": "lost", "count": count})


def trace_file(tracer: Tracer, services: Callable[[], MountServices | None]) -> DeviceFile:
    """debug/trace: each open is a reader of `tracer`; `services` gives the mount once attached."""

    def open_trace(req: Request, flags: int) -> TraceReader:
        mount = services()
        return TraceReader(tracer, thread_group(req.pid), mount.pending if mount else None,
                           mount.notify_poll if mount else None)

    return DeviceFile(name="trace", mode=stat.S_IFREG | 0o444, opener=open_trace)
