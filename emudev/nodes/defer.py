"""Replying to a request (an ioctl, a blocking read) whose handler finishes later."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from emudev.drm.completion import Completion
from emudev.drm.ioctl import IoctlOutcome
from emudev.fuse import DEFERRED, Deferred, Request


class PendingWaits:
    """Every deferred ioctl of a mount, so that unplugging can end them all (ENODEV):
    a client blocked in a wait must never outlive the device it waits on."""

    def __init__(self) -> None:
        self._waits: set[Completion] = set()
        self._lock = threading.Lock()
        self._error = 0

    def add(self, completion: Completion) -> None:
        """Track `completion`; once the mount is unplugged, a wait that was still being set up
        when that happened is ended at once."""
        with self._lock:
            error = self._error
            if not error:
                self._waits.add(completion)
        if error:
            completion.complete(-error)
            return
        completion.on_cleanup(lambda: self._discard(completion))

    def _discard(self, completion: Completion) -> None:
        with self._lock:
            self._waits.discard(completion)

    def cancel_all(self, error: int) -> None:
        """End every wait with -error, and every wait added from now on too."""
        with self._lock:
            self._error = error
            waits = list(self._waits)
        for completion in waits:
            completion.complete(-error)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waits)


def park(req: Request, completion: Completion, pending: PendingWaits | None,
         answer: Callable[[int], None]) -> Deferred:
    """Leave `req` unanswered until `completion` finishes, then `answer(result)`: the caller
    being interrupted finishes it with -EINTR, the mount being unplugged with -ENODEV."""
    completion.on_done(answer)
    req.on_interrupt(lambda _req: completion.complete(-errno.EINTR))
    if pending is not None:
        pending.add(completion)
    return DEFERRED


def block_until_interrupted(req: Request, pending: PendingWaits | None) -> Deferred:
    """A read(2) with nothing to return that may block, as drm_read() with no events: only
    a signal (EINTR) or the device going away (ENODEV) ends it."""
    return park(req, Completion(), pending, lambda result: req.reply_error(-result))


def defer(req: Request, outcome: IoctlOutcome, pending: PendingWaits | None) -> Deferred:
    """Reply when the handler's completion finishes."""
    later = outcome.later
    assert later is not None
    return park(req, later, pending, lambda result: req.reply_ioctl(result, outcome.finish()))
