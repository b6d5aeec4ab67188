"""dma_resv: the implicit fences of a buffer (drivers/dma-buf/dma-resv.c).

Every fence is added with a usage. Asking for a usage returns the fences of that
usage and of every stronger one: WRITE gives the writers, READ the writers and
readers, BOOKKEEP everything. A new fence replaces an older one of the same
context and usage (a context's fences are ordered), and signalled fences are
pruned, so the object stays small however many jobs pass through.
"""

from __future__ import annotations

import enum
import threading

from emudev.sync.fence import DmaFence


class Usage(enum.IntEnum):
    """dma_resv_usage, weakest last: asking for one includes every stronger usage."""

    KERNEL = 0
    WRITE = 1
    READ = 2
    BOOKKEEP = 3


class Reservation:
    def __init__(self) -> None:
        self._fences: list[tuple[DmaFence, Usage]] = []
        self._lock = threading.Lock()

    def add(self, fence: DmaFence, usage: Usage) -> None:
        """dma_resv_add_fence()."""
        with self._lock:
            self._fences = [(f, u) for f, u in self._fences
                            if not f.signaled and not (f.context == fence.context and u == usage)]
            self._fences.append((fence, usage))

    def fences(self, usage: Usage) -> list[DmaFence]:
        """dma_resv_for_each_fence(usage): the unsignalled fences of `usage` and stronger."""
        with self._lock:
            self._fences = [(f, u) for f, u in self._fences if not f.signaled]
            return [f for f, u in self._fences if u <= usage]

    def test_signaled(self, usage: Usage) -> bool:
        return not self.fences(usage)
