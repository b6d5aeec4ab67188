"""Coherence of a file's CPU mapping of BOs through the device fd.

That mapping goes through the kernel's page cache of the file's own inode: pages
fault in from device memory (FUSE READ) and dirty pages come back later
(writeback). BO_PREP and BO_FINI are the sync points: both drop the cached pages
of the BO's range, which first writes dirty pages back, so after PREP the CPU sees
device memory and after FINI device memory holds what the CPU wrote. The drop is
a FUSE notification, which may need the daemon's workers to answer the writeback,
so it is sent from the notifier thread and the ioctl completes afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.drm.completion import Completion
from emudev.engine.semaphore import doorbell

if TYPE_CHECKING:
    from emudev.gem.object import GemObject

Invalidate = Callable[[int, int, int, Callable[[], None]], None]


class CpuView:
    def __init__(self, invalidate: Invalidate | None, nodeid: int = 0) -> None:
        self._invalidate = invalidate
        self._nodeid = nodeid

    def begin(self, obj: GemObject, offset: int | None = None) -> int | Completion:
        """Make the cached pages of `obj`, mapped at `offset` of this inode (default: its
        fake mmap offset), current; writes cached so far reach device memory first."""
        start = obj.mmap_offset if offset is None else offset
        if self._invalidate is None or (offset is None and not start):
            return 0
        done = Completion()
        self._invalidate(self._nodeid, start, obj.size, lambda: done.complete(0))
        return done

    def end(self, obj: GemObject, offset: int | None = None) -> int | Completion:
        """As begin(), at the end of CPU access, which may have written a semaphore word an
        engine waits on: the waiters look again (pages written back ring once more)."""
        doorbell.ring()
        return self.begin(obj, offset)
