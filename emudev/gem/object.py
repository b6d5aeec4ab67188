"""GEM objects and their lifetime (drm_gem.c's kref and handle_count).

An object lives while anything refers to it. References are counted by kind —
handles, dma-bufs, imports, tickets, jobs — both to free it at the right moment
and to show in debug/accelN/gem_objects who keeps a BO alive.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.gem.memory import PAGE_SIZE, BoMemory
from emudev.gem.refs import KindRefs
from emudev.sync.resv import Reservation

if TYPE_CHECKING:
    from emudev.gem.dmabuf import DmaBuf

log = logging.getLogger("emudev.gem")

# drm_vma_manager: fake offsets start at 4 GiB on 64-bit, so they never collide with
# anything a real file offset could mean.
MMAP_OFFSET_START = 1 << 32

_ids = itertools.count(1)


# Each BO's offsets start a slot of at least this many bytes: the rest of the slot is
# a guard, so a mapping that runs past the end of its BO faults.
MMAP_SLOT = 1 << 32


class MmapOffsets:
    """Fake mmap offsets, unique per BO and never reused.

    A BO owns a slot of at least 4 GiB (twice its size rounded up to a power of two
    when larger), so a mapping longer than its BO meets unbacked offsets, not the next
    BO. The space (up to 2^60) holds hundreds of millions of slots.
    """

    def __init__(self) -> None:
        self._next = MMAP_OFFSET_START
        self._lock = threading.Lock()
        self._starts: list[int] = []  # ascending, since offsets only grow
        self._objects: dict[int, GemObject] = {}

    def assign(self, obj: GemObject) -> int:
        with self._lock:
            offset = self._next
            self._next += max(MMAP_SLOT, 1 << (2 * obj.size - 1).bit_length())
            self._starts.append(offset)
            self._objects[offset] = obj
            return offset

    def remove(self, obj: GemObject) -> None:
        with self._lock:
            if self._objects.pop(obj.mmap_offset, None) is not None:
                del self._starts[bisect.bisect_left(self._starts, obj.mmap_offset)]

    def find(self, offset: int) -> tuple[GemObject, int] | None:
        """The object whose range holds `offset`, and the position inside it."""
        with self._lock:
            i = bisect.bisect_right(self._starts, offset) - 1
            if i < 0:
                return None
            start = self._starts[i]
            obj = self._objects[start]
            return (obj, offset - start) if offset < start + obj.size else None


class GemObject:
    def __init__(self, device: object, size: int, flags: int, memory: BoMemory,
                 on_free: Callable[[GemObject], None], import_attach: DmaBuf | None = None,
                 resv: Reservation | None = None) -> None:
        self.id = next(_ids)
        self.device = device
        self.size = size
        self.flags = flags
        self.memory = memory
        self.import_attach = import_attach
        # An import shares its exporter's reservation object, as dma_buf->resv is shared.
        self.resv = resv or Reservation()
        self.dma_buf: DmaBuf | None = None
        self.name = 0
        self.mmap_offset = 0
        self.handle_count = 0
        self._refs = KindRefs(f"BO {self.id}", lambda: on_free(self))

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    def get(self, kind: str) -> GemObject:
        self._refs.get(kind)
        return self

    def put(self, kind: str) -> None:
        self._refs.put(kind)

    def holders(self) -> dict[str, int]:
        return self._refs.holders()
