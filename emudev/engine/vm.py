"""A file's device address space: where each of its BOs sits for the engines.

Every open file has its own (as rocket gives each file its own IOMMU domain), so a
device address means nothing outside the file that got it.
"""

from __future__ import annotations

import threading

from emudev.gem.memory import PAGE_SIZE

VA_START = 1 << 32
VA_END = 1 << 47


class AddressSpace:
    def __init__(self) -> None:
        self._next = VA_START
        self._by_object: dict[int, int] = {}
        self._lock = threading.Lock()

    def map(self, obj: object) -> int:
        """Place `obj` (once per file), leaving an unmapped guard page after it."""
        key = id(obj)
        with self._lock:
            if key not in self._by_object:
                size = obj.size  # type: ignore[attr-defined]
                if self._next + size > VA_END:
                    raise OSError(12, "device address space exhausted")
                self._by_object[key] = self._next
                self._next += size + PAGE_SIZE
            return self._by_object[key]

    def unmap(self, obj: object) -> None:
        with self._lock:
            self._by_object.pop(id(obj), None)

    def address_of(self, obj: object) -> int:
        with self._lock:
            return self._by_object.get(id(obj), 0)
