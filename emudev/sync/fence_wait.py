"""Waiting for a set of fences as a deferred reply (dma_resv_wait_timeout and friends)."""

from __future__ import annotations

import errno
from collections.abc import Callable

from emudev.drm.completion import Completion
from emudev.sync.fence import DmaFence, now_ns, when_all
from emudev.sync.timer import deadlines

Result = int | Completion


def wait_all(fences: list[DmaFence], timeout_ns: int | None) -> Result:
    """0 once every fence signalled; -ETIME at the absolute `timeout_ns` (0 or past: poll;
    None: no deadline — the caller's interrupt, or device loss, ends it)."""
    pending = [f for f in fences if not f.signaled]
    if not pending:
        return 0
    if timeout_ns is not None and timeout_ns <= now_ns():
        return -errno.ETIME
    done = Completion()
    for remove in when_all(pending, lambda: done.complete(0)):
        done.on_cleanup(remove)
    if timeout_ns is not None:
        done.on_cleanup(deadlines.at(timeout_ns, lambda: done.complete(-errno.ETIME)))
    return done


def then(first: Result, step: Callable[[], Result]) -> Result:
    """Run `step` after `first` succeeded; the result is `first`'s error or `step`'s result."""
    if isinstance(first, int):
        return first if first < 0 else step()
    chained = Completion()
    chained.on_cleanup(lambda: first.complete(-errno.EINTR))

    def continue_with(result: int) -> None:
        if result < 0:
            chained.complete(result)
            return
        following = step()
        if isinstance(following, int):
            chained.complete(following)
        else:
            following.on_done(chained.complete)

    first.on_done(continue_with)
    return chained
