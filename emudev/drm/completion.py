"""Ioctls that finish later: the handler returns a Completion instead of blocking.

No daemon thread ever waits for a client's condition (DESIGN, the ioctl flow): a
handler that must wait registers what will complete it and returns. Exactly one
of completion, deadline or interrupt ends it; the loser's attempt is a no-op.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("emudev.completion")


class Completion:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._result: int | None = None
        self._done: list[Callable[[int], None]] = []
        self._cleanup: list[Callable[[], None]] = []

    @property
    def finished(self) -> bool:
        return self._result is not None

    def on_done(self, callback: Callable[[int], None]) -> None:
        """Run `callback(result)` once finished (at once if it already is)."""
        with self._lock:
            if self._result is None:
                self._done.append(callback)
                return
            result = self._result
        callback(result)

    def on_cleanup(self, callback: Callable[[], None]) -> None:
        """Undo registrations (waiter lists, timers) when finished, however that happens."""
        with self._lock:
            if self._result is None:
                self._cleanup.append(callback)
                return
        callback()

    def complete(self, result: int) -> bool:
        """Finish with `result` (0, a positive value, or -errno); False if already finished."""
        with self._lock:
            if self._result is not None:
                return False
            self._result = result
            done, self._done = self._done, []
            cleanup, self._cleanup = self._cleanup, []
        for fn in cleanup:
            fn()
        for fn in done:
            try:
                fn(result)
            except Exception:
                log.exception("completion callback failed")
        return True
