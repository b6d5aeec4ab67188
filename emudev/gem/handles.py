"""Per-file handle tables, the emulator's idr of drm_file.object_idr / syncobj_idr.

Handles are small integers starting at 1 (0 is never valid), private to one open
file. Like idr_alloc(idr, obj, 1, 0) the lowest free number is handed out, so a
closed handle's number comes back; freed numbers wait in a heap so allocation stays
O(log n) however many handles are live. Numbers from `_next` up that are not in use are
free without being listed, so placing a handle far out (GEM_CHANGE_HANDLE) costs nothing.
"""

from __future__ import annotations

import heapq
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class HandleTable(Generic[T]):
    def __init__(self) -> None:
        self._objects: dict[int, T] = {}
        self._free: list[int] = []
        self._next = 1
        self._lock = threading.Lock()

    def insert(self, obj: T) -> int:
        with self._lock:
            handle = self._lowest_free()
            self._objects[handle] = obj
            return handle

    def _lowest_free(self) -> int:
        while self._next in self._objects:
            self._next += 1
        # Heap entries taken again by insert_at(), or not below _next (free implicitly), are stale.
        while self._free and (self._free[0] in self._objects or self._free[0] >= self._next):
            heapq.heappop(self._free)
        if self._free:
            return heapq.heappop(self._free)
        self._next += 1
        return self._next - 1

    def insert_at(self, handle: int, obj: T) -> bool:
        """Put `obj` at exactly `handle`; False if that number is taken."""
        with self._lock:
            if handle in self._objects:
                return False
            self._objects[handle] = obj
            return True

    def lookup(self, handle: int) -> T | None:
        # One dict read is atomic: no lock, on the path of nearly every ioctl.
        return self._objects.get(handle)

    def remove(self, handle: int) -> T | None:
        with self._lock:
            obj = self._objects.pop(handle, None)
            if obj is not None:
                heapq.heappush(self._free, handle)
            return obj

    def items(self) -> list[tuple[int, T]]:
        with self._lock:
            return list(self._objects.items())

    def drain(self) -> list[T]:
        """Empty the table (file release) and return what it held."""
        with self._lock:
            objects = list(self._objects.values())
            self._objects.clear()
            self._free.clear()
            self._next = 1
            return objects

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
