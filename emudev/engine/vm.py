"""A file's device address space: where each of its BOs sits for the engines.

Every open file has its own (as rocket gives each file its own IOMMU domain), so a
device address means nothing outside the file that got it. The engines translate
through it on every access, so a BO whose last handle went is gone for them too.
"""

from __future__ import annotations

import bisect
import errno
import threading
from typing import TYPE_CHECKING, NamedTuple

from emudev.gem.memory import PAGE_SIZE

if TYPE_CHECKING:
    from emudev.gem.object import GemObject

VA_START = 1 << 32
VA_END = 1 << 47


class Translation(NamedTuple):
    """Where a device range lands: the BO and the offset in it. A named tuple because
    every operand of every packet is translated, at SUBMIT and again when it runs."""

    obj: GemObject
    offset: int


class AddressSpace:
    def __init__(self) -> None:
        self._next = VA_START
        self._by_object: dict[int, int] = {}
        self._handles: dict[int, int] = {}
        self._starts: list[int] = []
        self._objects: dict[int, GemObject] = {}
        self._lock = threading.Lock()

    def map(self, obj: GemObject) -> int:
        """Place `obj` once per file, leaving an unmapped guard page after it; every handle
        of the file to it counts, so that the address goes with the last one."""
        with self._lock:
            if obj.id not in self._by_object:
                if self._next + obj.size > VA_END:
                    raise OSError(errno.ENOMEM, "device address space exhausted")
                start = self._next
                self._by_object[obj.id] = start
                self._objects[start] = obj
                self._starts.append(start)  # addresses only grow, so the list stays sorted
                self._next += obj.size + PAGE_SIZE
            self._handles[obj.id] = self._handles.get(obj.id, 0) + 1
            return self._by_object[obj.id]

    def unmap(self, obj: GemObject) -> None:
        """One handle of the file to `obj` is gone."""
        with self._lock:
            left = self._handles.get(obj.id, 0) - 1
            if left > 0:
                self._handles[obj.id] = left
                return
            self._handles.pop(obj.id, None)
            start = self._by_object.pop(obj.id, None)
            if start is not None:
                del self._objects[start]
                del self._starts[bisect.bisect_left(self._starts, start)]

    def address_of(self, obj: GemObject) -> int:
        """The object's address here, 0 if this file has no handle to it."""
        with self._lock:
            return self._by_object.get(obj.id, 0)

    def translate(self, va: int, length: int) -> Translation | None:
        """The BO holding all of [va, va + length), or None when the range is not inside one."""
        with self._lock:
            i = bisect.bisect_right(self._starts, va) - 1
            if i < 0:
                return None
            start = self._starts[i]
            obj = self._objects[start]
            if va + length > start + obj.size:
                return None
            return Translation(obj, va - start)
