"""The doorbell that wakes engines waiting on semaphore words.

A SEM_WAIT waits for a u32 word in device memory to meet its condition. Hardware polls
the word, since anyone may write it: an engine of this or another device, the CPU through
a mapping. An emulated engine polling every few hundred microseconds takes host CPU from
the engines doing numpy work (two such pollers slow a run of convolutions by about 10% on
two CPUs), so waiters sleep on one doorbell for the whole daemon instead, rung by every
writer the daemon sees: SEM_SIGNAL on any device, the end of a CPU access (BO_FINI,
DMA_BUF_IOCTL_SYNC END, a page written back), a job stopped. A CPU store the daemon cannot
see (through a mapping, without the bracket) is still found by a poll whose interval backs
off from POLL_FIRST_S to POLL_MAX_S.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

POLL_FIRST_S = 0.0005
POLL_MAX_S = 0.010


class Doorbell:
    def __init__(self, poll_first_s: float = POLL_FIRST_S, poll_max_s: float = POLL_MAX_S) -> None:
        self._condition = threading.Condition()
        self._poll_first_s, self._poll_max_s = poll_first_s, poll_max_s

    def ring(self) -> None:
        """Memory a waiter may be watching has changed, or a waiter has been told to stop."""
        with self._condition:
            self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Write a semaphore word inside: no waiter checks it halfway, and every waiter looks again."""
        with self._condition:
            yield
            self._condition.notify_all()

    def holds(self, condition: Callable[[], bool]) -> bool:
        """`condition` evaluated with no SEM_SIGNAL halfway through its write."""
        with self._condition:
            return condition()

    def wait(self, done: Callable[[], bool]) -> None:
        """Sleep until `done()` holds; rings wake at once, polls find writes nobody rang for."""
        interval = self._poll_first_s
        with self._condition:
            while not done():
                self._condition.wait(interval)
                interval = min(2 * interval, self._poll_max_s)


doorbell = Doorbell()
