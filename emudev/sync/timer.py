"""Deadlines of every wait in the daemon, on one thread.

Waits are deferred replies (no thread parked per waiter); their absolute
CLOCK_MONOTONIC deadlines sit in one heap served by one thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from emudev.sync.fence import now_ns

log = logging.getLogger("emudev.timer")


class DeadlineTimer:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def at(self, deadline_ns: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Run `fn` on the timer thread at `deadline_ns`; returns a canceller."""
        key = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (deadline_ns, key, fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][1] == key:  # only an earlier deadline changes how long the thread sleeps
                self._cond.notify()

        def cancel() -> None:
            with self._cond:
                self._cancelled.add(key)

        return cancel

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] in self._cancelled:
                        self._cancelled.discard(heapq.heappop(self._heap)[1])
                    if self._heap and self._heap[0][0] <= now_ns():
                        _, _, fn = heapq.heappop(self._heap)
                        break
                    wait = (self._heap[0][0] - now_ns()) / 1e9 if self._heap else None
                    self._cond.wait(wait)
            try:
                fn()
            except Exception:
                log.exception("deadline callback failed")


deadlines = DeadlineTimer()
