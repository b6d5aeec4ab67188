"""Replying to an ioctl whose handler finishes later."""

from __future__ import annotations

import errno

from emudev.drm.ioctl import IoctlOutcome
from emudev.fuse import DEFERRED, Deferred, Request


def defer(req: Request, outcome: IoctlOutcome) -> Deferred:
    """Reply when the handler's completion finishes; an interrupted caller gets EINTR."""
    later = outcome.later
    assert later is not None
    later.on_done(lambda result: req.reply_ioctl(result, outcome.finish()))
    req.on_interrupt(lambda _req: later.complete(-errno.EINTR))
    return DEFERRED
