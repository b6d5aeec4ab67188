"""CPU mappings the daemon cannot see: the references the kernel's vmas hold.

In the kernel a mapping holds its GEM object (drm_gem_vm_open/close) and, for a dma-buf,
its file, so memory stays valid until munmap(). FUSE tells the daemon about neither
mmap() nor munmap(), and a passthrough mapping does not even keep the FUSE file open.
What the daemon can see is the mappings themselves: each line of /proc/PID/maps names
the mount's device, the node's inode and the file offset the mapping starts at.

So when the last reference the daemon knows of is about to go from something that may
still be mapped, a hold takes its place: a "mapping" reference that a sweeper drops once
no process maps that range of that node any more, as munmap() would have dropped it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emudev.gem.object import GemObject

log = logging.getLogger("emudev.vma")

# How often held ranges are looked for again: the delay between a munmap() and the
# memory going back to the device.
SWEEP_INTERVAL = 0.5


@dataclass(frozen=True)
class NodeRange:
    """File offsets [start, end) of one node of the mount."""

    ino: int
    start: int
    end: int


def _maps_lines(exclude_pid: int, device: bytes) -> Iterator[bytes]:
    """Every line of every process's maps that names `device` ("MM:mm"), the daemon's own excepted."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude_pid:
            continue
        try:
            with open(f"/proc/{name}/maps", "rb") as f:
                data = f.read()
        except OSError:
            continue  # gone, or a kernel thread
        if device in data:
            yield from (line for line in data.splitlines() if device in line)


def mapped_ranges(dev: int, ranges: Collection[NodeRange], exclude_pid: int) -> set[NodeRange]:
    """The `ranges` that some process maps, wholly or in part."""
    device = f"{os.major(dev):02x}:{os.minor(dev):02x}".encode()
    by_ino: dict[int, list[NodeRange]] = {}
    for r in ranges:
        by_ino.setdefault(r.ino, []).append(r)
    found: set[NodeRange] = set()
    for line in _maps_lines(exclude_pid, device):
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or fields[3] != device:
            continue
        wanted = by_ino.get(int(fields[4]))
        if not wanted:
            continue
        lo, hi = (int(x, 16) for x in fields[0].split(b"-"))
        start = int(fields[2], 16)
        end = start + hi - lo
        found.update(r for r in wanted if start < r.end and r.start < end)
    return found


class Hold:
    """One reference kept for a mapping; `release` drops it, exactly once."""

    def __init__(self, where: NodeRange, release: Callable[[], None]) -> None:
        self.where = where
        self._release = release

    def __repr__(self) -> str:
        return f"<Hold ino={self.where.ino} [{self.where.start:#x}, {self.where.end:#x})>"


class MappingHolds:
    """The holds of one mount, and the sweeper thread that runs while there are any."""

    def __init__(self, dev: int, interval: float = SWEEP_INTERVAL) -> None:
        self.dev = dev
        self.interval = interval
        self._holds: set[Hold] = set()
        self._wake = threading.Condition()
        self._sweeper: threading.Thread | None = None

    def __len__(self) -> int:
        with self._wake:
            return len(self._holds)

    def hold(self, where: NodeRange, release: Callable[[], None]) -> Hold:
        """Keep a reference (the caller took it) until nobody maps `where`; the first look is right away."""
        hold = Hold(where, release)
        with self._wake:
            self._holds.add(hold)
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep_while_held, name="vma-sweeper", daemon=True)
                self._sweeper.start()
            self._wake.notify()
        return hold

    def drop(self, hold: Hold) -> None:
        """Release now, whatever the mappings say (the file the mapping was of is closed)."""
        with self._wake:
            if hold not in self._holds:
                return
            self._holds.discard(hold)
        hold._release()

    def sweep(self) -> None:
        """Release every hold whose range nobody maps any more."""
        with self._wake:
            holds = list(self._holds)
        if not holds:
            return
        try:
            still = mapped_ranges(self.dev, {h.where for h in holds}, os.getpid())
        except OSError:
            log.exception("reading /proc/*/maps failed; mappings are kept until their files close")
            return
        for hold in holds:
            if hold.where not in still:
                self.drop(hold)

    def _sweep_while_held(self) -> None:
        while True:
            self.sweep()
            with self._wake:
                if not self._holds:
                    self._sweeper = None
                    return
                self._wake.wait(self.interval)


class FileMappings:
    """A device fd's mappings of BOs whose handles it has closed (drm_gem_mmap's vma references).

    Only BOs whose pages this file served are looked for: a mapping that was never
    touched has no pages to keep, and looking costs a pass over /proc.
    """

    def __init__(self, holds: MappingHolds, ino: int) -> None:
        self._holds = holds
        self._ino = ino
        self._faulted: set[int] = set()
        self._kept: dict[int, tuple[GemObject, Hold]] = {}
        self._closed = False
        self._lock = threading.Lock()

    def faulted(self, obj: GemObject) -> None:
        """The file served a page of `obj` to a mapping."""
        with self._lock:
            self._faulted.add(obj.id)

    def keeps(self, obj: GemObject) -> bool:
        with self._lock:
            return obj.id in self._kept

    def handle_gone(self, obj: GemObject) -> None:
        """The file's last handle to `obj` is going: a mapping of it keeps it from here on."""
        with self._lock:
            if self._closed or obj.id not in self._faulted:
                return
            self._faulted.discard(obj.id)
            obj.get("mapping")
            where = NodeRange(self._ino, obj.mmap_offset, obj.mmap_offset + obj.size)
            self._kept[obj.id] = (obj, self._holds.hold(where, lambda: self._unkeep(obj)))

    def _unkeep(self, obj: GemObject) -> None:
        with self._lock:
            self._kept.pop(obj.id, None)
        obj.put("mapping")

    def close(self) -> None:
        """The file is released, so none of its mappings is left (each would hold it open)."""
        with self._lock:
            self._closed = True
            holds = [hold for _, hold in self._kept.values()]
        for hold in holds:
            self._holds.drop(hold)
