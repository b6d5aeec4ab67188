"""Replying to an ioctl whose handler finishes later."""

from __future__ import annotations

import errno
import threading

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


def block_until_interrupted(req: Request, pending: PendingWaits | None) -> Deferred:
    """A read(2) with nothing to return that may block, as drm_read() with no events: only
    a signal (EINTR) or the device going away (ENODEV) ends it."""
    parked = Completion()
    parked.on_done(lambda result: req.reply_error(-result))
    req.on_interrupt(lambda _req: parked.complete(-errno.EINTR))
    if pending is not None:
        pending.add(parked)
    return DEFERRED


def defer(req: Request, outcome: IoctlOutcome, pending: PendingWaits | None) -> Deferred:
    """Reply when the handler's completion finishes; an interrupted caller gets EINTR."""
    later = outcome.later
    assert later is not None
    if pending is not None:
        pending.add(later)
    later.on_done(lambda result: req.reply_ioctl(result, outcome.finish()))
    req.on_interrupt(lambda _req: later.complete(-errno.EINTR))
    return DEFERRED
