"""References counted by kind: the kernel's kref, plus who holds them (for debug files)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable


class KindRefs:
    def __init__(self, owner: str, on_last: Callable[[], None]) -> None:
        self._owner = owner
        self._counts: Counter[str] = Counter()
        self._on_last = on_last
        self._lock = threading.Lock()

    def get(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def put(self, kind: str) -> None:
        """Drop one `kind` reference; the last reference of any kind releases the owner."""
        with self._lock:
            if self._counts[kind] <= 0:
                raise AssertionError(f"{self._owner}: more puts than gets of {kind}")
            self._counts[kind] -= 1
            if self._counts[kind] == 0:
                del self._counts[kind]
            last = not self._counts
        if last:
            self._on_last()

    def holders(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
