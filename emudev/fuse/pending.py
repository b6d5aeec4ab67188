"""The requests read and not yet answered, and the routing of INTERRUPTs to them.

Workers read the device without a common lock (serialising the reads costs
more than half the round-trip time), so an INTERRUPT can be read by one worker
before another has registered the request it names. fuse.h's interrupt
protocol covers that: an INTERRUPT for an unknown request is kept back, and if
that request does not show up within a few requests, answered with EAGAIN so
the kernel queues it again (or drops it, if the request is done). Requests
answered recently are remembered, so an INTERRUPT that lost the race against
the reply is simply dropped: the kernel expects no answer to those.

Every request takes the lock twice (registered, answered), so those two paths
are kept to a few dict and set operations: answered uniques are remembered in
two generations of sets, the older dropped whole, instead of one by one in order.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emudev.fuse.request import InterruptCallback, Request

# At least this many of the last answered uniques are remembered to recognise late INTERRUPTs.
RECENTLY_ANSWERED = 4096
# How many newer requests an early INTERRUPT waits for its request before EAGAIN.
INTERRUPT_PATIENCE = 16


class PendingRequests:
    """Unanswered requests by unique; the one lock that makes "reply exactly once" hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[int, Request] = {}
        # The uniques answered lately; the older set is dropped once the newer one is full.
        self._answered: set[int] = set()
        self._answered_before: set[int] = set()
        self._registered = 0
        # unique named by an INTERRUPT -> (that INTERRUPT, self._registered when it came)
        self._early: dict[int, tuple[Request, int]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, req: Request) -> None:
        # acquire/release rather than `with`: half the cost, on every request.
        self._lock.acquire()
        try:
            self._requests[req.unique] = req
            self._registered += 1
            if not self._early:
                return
            if self._early.pop(req.unique, None) is not None:
                req._interrupted = True
            overdue = self._take_overdue_interrupts()
        finally:
            self._lock.release()
        for interrupt in overdue:
            interrupt.reply_error(errno.EAGAIN)

    def _take_overdue_interrupts(self) -> list[Request]:
        overdue = [unique for unique, (_, since) in self._early.items()
                   if self._registered - since > INTERRUPT_PATIENCE]
        return [self._early.pop(unique)[0] for unique in overdue]

    def retire(self, req: Request) -> bool:
        """Claim the right to reply; False once the session is closed and its descriptors are gone."""
        self._lock.acquire()
        try:
            if req._replied:
                raise RuntimeError(f"{req!r} was already replied to")
            req._replied = True
            if self._requests.pop(req.unique, None) is not None:
                answered = self._answered
                answered.add(req.unique)
                if len(answered) >= RECENTLY_ANSWERED:
                    self._answered_before, self._answered = answered, set()
            return not self._closed
        finally:
            self._lock.release()

    def _was_answered(self, unique: int) -> bool:
        return unique in self._answered or unique in self._answered_before

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
                if not self._was_answered(unique):
                    self._early[unique] = (interrupt, self._registered)
                return
            req._interrupted = True
            callback = req._on_interrupt
        if callback is not None:
            callback(req)
