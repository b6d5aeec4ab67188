"""The accel/accelN node: each open() is a DrmFile, each ioctl goes to the DRM dispatcher.

`accel/accelN` is a symlink that resolves, on every path walk, to a fresh hidden
node of its own (`accel/.accelN.<k>`), so every open file has its own inode. That
is what keeps CPU mappings through the device fd private: the kernel's page cache
belongs to an inode, and pages one client faulted in are never served to another.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from emudev import check
from emudev.drm.cpu_view import CpuView, Invalidate
from emudev.drm.device import DrmDevice
from emudev.drm.file import ClientIdentity, DrmFile
from emudev.drm.ioctl import DrmDispatcher
from emudev.drm.usermem import user_memory
from emudev.engine.semaphore import doorbell
from emudev.engine.submit import release_file as release_contexts
from emudev.fuse import Deferred, Request
from emudev.fuse.ops import IoctlReply
from emudev.gem.dmabuf import DmaBuf
from emudev.gem.gem import release_file
from emudev.gem.object import GemObject
from emudev.gem.vma import FileMappings
from emudev.nodes.defer import PendingWaits, block_until_interrupted, defer
from emudev.nodes.tree import DeviceFile, Directory, InodeTable, OpenFile, Symlink
from emudev.sync.syncobj_ioctl import release_file as release_syncobjs

log = logging.getLogger("emudev.accel")

# mmap() refuses offsets beyond st_size; fake offsets go up to here.
NODE_SIZE = 1 << 60
# A per-open node nobody opened within this time (a stat(), a readlink) is dropped.
UNOPENED_TIMEOUT = 10.0


class AccelFile(OpenFile):
    """An open accel node. read(2) and write(2) reach it directly, as they reach drm_read()
    and no write() at all in the kernel; faults and write-back of its mappings come
    through the page cache of its own inode."""

    direct_io = True
    shared_mmap = True

    def __init__(self, file: DrmFile, dispatcher: DrmDispatcher) -> None:
        self.file = file
        self.dispatcher = dispatcher

    def ioctl(self, req: Request, cmd: int, arg: int, in_data: memoryview, out_size: int) -> IoctlReply | Deferred:
        """The outcome of a finished ioctl is itself the reply (it has ``result`` and ``data``)."""
        outcome = self.dispatcher.dispatch(self.file, cmd, in_data, user_memory(req.pid))
        if outcome.later is None:
            return outcome
        return defer(req, outcome, self._pending_waits())

    def _pending_waits(self) -> PendingWaits | None:
        mount = self.file.device.mount
        return mount.pending if mount is not None else None

    def _accessible(self, offset: int) -> tuple[GemObject, int]:
        """drm_gem_mmap()'s rule: only a BO this file holds a handle to is visible, or one it
        still maps after closing its handle."""
        found = self.file.device.gem.offsets.find(offset)
        mappings = self.file.mappings
        if found is None or not (self.file.vm.address_of(found[0]) or (mappings and mappings.keeps(found[0]))):
            raise OSError(errno.EINVAL, "no BO of this file at that offset")
        if mappings is not None:
            mappings.faulted(found[0])
        return found

    def read(self, req: Request, offset: int, size: int) -> bytes | Deferred:
        """A page fault of a mapping; past the BO's end (its guard range) reads zeros, never short."""
        if not req.page_cache:
            return self._read_events(req)
        obj, position = self._accessible(offset)
        if check.active is not None:
            check.active.cpu_read(self.file, obj, position, position + size)
        return bytes(obj.memory.view()[position: position + size]).ljust(size, b"\0")

    def _read_events(self, req: Request) -> Deferred:
        """drm_read(): an accel device sends no DRM events, so read(2) fails at once with
        EAGAIN under O_NONBLOCK and otherwise blocks until a signal."""
        if req.file_flags & os.O_NONBLOCK:
            raise OSError(errno.EAGAIN, "no events to read")
        return block_until_interrupted(req, self._pending_waits())

    def write(self, req: Request, offset: int, data: memoryview) -> int:
        """Write-back of dirty mapped pages into the BO; write(2) is EINVAL, as for a file
        whose file_operations have no write."""
        if not req.page_cache:
            raise OSError(errno.EINVAL, "accel files are not written to")
        obj, position = self._accessible(offset)
        if check.active is not None:
            check.active.cpu_write(self.file, obj, position, position + len(data))
        memory = obj.memory.view()
        end = min(position + len(data), len(memory))
        memory[position:end] = data[: end - position]
        doorbell.ring()  # the CPU wrote device memory: a semaphore word, maybe
        return len(data)

    def release(self) -> None:
        if self.file.mappings is not None:
            self.file.mappings.close()
        release_contexts(self.file)
        release_file(self.file)
        release_syncobjs(self.file)
        self.file.device.release_file(self.file)
        log.debug("%s: file %d of pid %d closed", self.file.device.name, self.file.id, self.file.client.tgid)
        if check.active is not None:
            check.active.file_released(self.file, self._dmabufs_held())

    def _dmabufs_held(self) -> list[tuple[int, int]]:
        """(fd, BO id) of this device's dma-bufs the closing process still has open."""
        mount = self.file.device.mount
        tgid = self.file.client.tgid
        if mount is None:
            return []
        try:
            fds = [int(fd) for fd in os.listdir(f"/proc/{tgid}/fd")]
        except OSError:
            return []
        held = []
        for fd in fds:
            try:
                target = mount.identify(tgid, fd)
            except OSError:
                continue
            if isinstance(target, DmaBuf) and target.obj.device is self.file.device.gem:
                held.append((fd, target.obj.id))
        return held


class AccelNodes:
    """The symlink accel/accelN of one device and the per-open nodes it resolves to."""

    def __init__(self, device: DrmDevice, dispatcher: DrmDispatcher, inodes: InodeTable, directory: Directory,
                 invalidate: Callable[[], Invalidate | None]) -> None:
        self.device = device
        self.dispatcher = dispatcher
        self.inodes = inodes
        self.directory = directory
        self.invalidate = invalidate
        self._serial = itertools.count(1)
        self._unopened: dict[DeviceFile, float] = {}
        self._lock = threading.Lock()
        inodes.add(directory, Symlink(name=device.name, target=self._new_node))

    def _new_node(self, req: Request) -> str:
        node = DeviceFile(name=f".{self.device.name}.{next(self._serial)}", file_size=NODE_SIZE, transient=True,
                          entry_timeout=0.0)
        node.opener = self._opener(node)
        self.inodes.add(self.directory, node, listed=False)
        with self._lock:
            self._unopened[node] = time.monotonic()
        return node.name

    def _opener(self, node: DeviceFile) -> Callable[[Request, int], AccelFile]:
        def open_accel(req: Request, flags: int) -> AccelFile:
            with self._lock:
                if self._unopened.pop(node, None) is None:
                    raise OSError(errno.ENOENT, "this node was already opened; open accel/accelN")
            if self.device.unplugged:
                raise OSError(errno.ENXIO, "the device was unplugged")
            self.inodes.unlink(node)
            file = self.device.open_file(ClientIdentity.of(req.pid, req.uid))
            file.cpu_view = CpuView(self.invalidate(), node.ino)
            if self.device.mount is not None:
                file.mappings = FileMappings(self.device.mount.mappings, node.ino)
            log.debug("%s: file %d opened by pid %d", self.device.name, file.id, file.client.tgid)
            return AccelFile(file, self.dispatcher)

        return open_accel

    def sweep(self) -> None:
        """Drop per-open nodes that a stat() or readlink made but nobody opened."""
        now = time.monotonic()
        with self._lock:
            stale = [n for n, made in self._unopened.items() if now - made > UNOPENED_TIMEOUT]
            for node in stale:
                del self._unopened[node]
        for node in stale:
            self.inodes.unlink(node)
