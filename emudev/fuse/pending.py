"""The requests read and not yet answered, and the routing of INTERRUPTs to them.

Workers read the device without a common lock (serialising the reads costs
more than half the round-trip time), so an INTERRUPT can be read by one worker
before another has registered the request it names. fuse.h's interrupt
protocol covers that: an INTERRUPT for an unknown request is kept back, and if
that request does not show up within a few requests, answered with EAGAIN so
the kernel queues it again (or drops it, if the request is done). Requests
answered recently are remembered, so an INTERRUPT that lost the race against
the reply is simply dropped: the kernel expects no answer to those.
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emudev.fuse.request import InterruptCallback, Request

# How many answered uniques are remembered to recognise late INTERRUPTs.
RECENTLY_ANSWERED = 4096
# How many newer requests an early INTERRUPT waits for its request before EAGAIN.
INTERRUPT_PATIENCE = 16


class PendingRequests:
    """Unanswered requests by unique; the one lock that makes "reply exactly once" hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[int, Request] = {}
        self._answered: deque[int] = deque()
        self._answered_set: set[int] = set()
        self._registered = 0
        # unique named by an INTERRUPT -> (that INTERRUPT, self._registered when it came)
        self._early: dict[int, tuple[Request, int]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, req: Request) -> None:
        with self._lock:
            self._requests[req.unique] = req
            self._registered += 1
            if not self._early:
                return
            if self._early.pop(req.unique, None) is not None:
                req._interrupted = True
            overdue = self._take_overdue_interrupts()
        for interrupt in overdue:
            interrupt.reply_error(errno.EAGAIN)

    def _take_overdue_interrupts(self) -> list[Request]:
        overdue = [unique for unique, (_, since) in self._early.items()
                   if self._registered - since > INTERRUPT_PATIENCE]
        return [self._early.pop(unique)[0] for unique in overdue]

    def retire(self, req: Request) -> bool:
        """Claim the right to reply; False once the session is closed and its descriptors are gone."""
        with self._lock:
            if req._replied:
                raise RuntimeError(f"{req!r} was already replied to")
            req._replied = True
            if self._requests.pop(req.unique, None) is not None:
                self._remember_answered(req.unique)
            return not self._closed

    def _remember_answered(self, unique: int) -> None:
        if len(self._answered) == RECENTLY_ANSWERED:
            self._answered_set.discard(self._answered.popleft())
        self._answered.append(unique)
        self._answered_set.add(unique)

    def close(self) -> None:
        """Turn late replies into no-ops: the descriptor numbers may already name other files."""
        with self._lock:
            self._closed = True
            self._requests.clear()
            self._early.clear()

    def set_interrupt_callback(self, req: Request, callback: InterruptCallback) -> bool:
        """Store the callback; True if it must run now because the interrupt came first."""
        with self._lock:
            req._on_interrupt = callback
            return req._interrupted and not req._replied

    def interrupt(self, interrupt: Request, unique: int) -> None:
        """Route ``interrupt`` (an INTERRUPT request) to the request ``unique``: mark it and run its
        callback if pending, keep it back if that request was not registered yet."""
        with self._lock:
            req = self._requests.get(unique)
            if req is None:
                if unique not in self._answered_set:
                    self._early[unique] = (interrupt, self._registered)
                return
            req._interrupted = True
            callback = req._on_interrupt
        if callback is not None:
            callback(req)
