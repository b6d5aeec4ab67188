"""A device's GEM state: its memory, fake offsets, flink names and live objects."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING

from emudev.gem.handles import HandleTable
from emudev.gem.memory import BoMemory, DeviceMemory
from emudev.gem.object import GemObject, MmapOffsets

if TYPE_CHECKING:
    from emudev.gem.dmabuf import DmaBuf

_memfd_names = itertools.count(1)


class GemDevice:
    def __init__(self, device_name: str, capacity: int) -> None:
        self.device_name = device_name
        self.memory = DeviceMemory(capacity)
        self.offsets = MmapOffsets()
        self.names: HandleTable[GemObject] = HandleTable()
        self._live: dict[int, GemObject] = {}
        self._lock = threading.Lock()

    def create(self, size: int, flags: int, mappable: bool) -> GemObject:
        """A new object with its own memory; the caller takes the first reference."""
        self.memory.reserve(size)
        memory = BoMemory(size, f"emudev-{self.device_name}-bo{next(_memfd_names)}")
        obj = GemObject(self, size, flags, memory, on_free=self._free)
        return self._track(obj, mappable)

    def wrap_import(self, exporter: GemObject, attach: DmaBuf, mappable: bool) -> GemObject:
        """An object of this device over another device's memory (a PRIME import)."""
        obj = GemObject(self, exporter.size, exporter.flags, exporter.memory, on_free=self._free,
                        import_attach=attach, resv=exporter.resv)
        return self._track(obj, mappable)

    def _track(self, obj: GemObject, mappable: bool) -> GemObject:
        if mappable:
            obj.mmap_offset = self.offsets.assign(obj)
        with self._lock:
            self._live[obj.id] = obj
        return obj

    def _free(self, obj: GemObject) -> None:
        with self._lock:
            self._live.pop(obj.id, None)
        if obj.mmap_offset:
            self.offsets.remove(obj)
        if obj.import_attach is not None:
            obj.import_attach.put("import")
        else:
            obj.memory.free()
            self.memory.release(obj.size)

    def live_objects(self) -> list[GemObject]:
        with self._lock:
            return sorted(self._live.values(), key=lambda o: o.id)
