"""dma-buf: a GEM object shared as a file (drivers/dma-buf/dma-buf.c).

A DmaBuf is the kernel's struct dma_buf: one per exported object, alive while
any of its files, the exporter's handles, an importer or an unclaimed ticket
refers to it. Its files are served by the mount; as root their mmap is FUSE
passthrough to the BO's own memfd (the same pages the device uses, no copy),
otherwise the page cache with coherence at DMA_BUF_IOCTL_SYNC.
"""

from __future__ import annotations

import errno
import itertools
import logging
import select
import threading
from typing import TYPE_CHECKING

from emudev.drm.completion import Completion
from emudev.drm.cpu_view import CpuView
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.engine.semaphore import doorbell
from emudev.fuse import Request
from emudev.gem.object import GemObject
from emudev.gem.refs import KindRefs
from emudev.gem.vma import NodeRange
from emudev.nodes.command_file import CommandFile
from emudev.nodes.defer import PendingWaits
from emudev.sync import sync_file
from emudev.sync.array import merge, unwrap
from emudev.sync.fence_wait import Result, then, wait_all
from emudev.sync.resv import Usage
from emudev.uapi import defs

if TYPE_CHECKING:
    from emudev.nodes.services import MountServices

log = logging.getLogger("emudev.dmabuf")

_ids = itertools.count(1)
_SYNC_FLAGS = defs.FLAGSETS["dma_buf_sync_flags"]


class DmaBuf:
    def __init__(self, obj: GemObject, registry: DmaBufRegistry) -> None:
        self.id = next(_ids)
        self.obj = obj.get("dmabuf")
        self.size = obj.size
        self.name = ""
        self.registry = registry
        self.services = registry.services
        self._refs = KindRefs(f"dma-buf {self.id}", self._release)
        self._lock = threading.Lock()
        self._backing_id: int | None = None

    def get(self, kind: str) -> DmaBuf:
        self._refs.get(kind)
        return self

    def put(self, kind: str) -> None:
        self._refs.put(kind)

    def holders(self) -> dict[str, int]:
        return self._refs.holders()

    def backing_id(self) -> int | None:
        """The passthrough backing id of the BO's memfd, registered on first use (None: no passthrough)."""
        with self._lock:
            if self._backing_id is None and self.services.backing_open is not None:
                self._backing_id = self.services.backing_open(self.obj.memory.fd())
            return self._backing_id

    def _release(self) -> None:
        """dma_buf_release(): the last reference went; drop the exporter's object."""
        self.registry.forget(self)
        if self._backing_id is not None:
            self.services.backing_close(self._backing_id)
        if self.obj.dma_buf is self:
            self.obj.dma_buf = None
        self.obj.put("dmabuf")


class DmaBufRegistry:
    """Every live dma-buf of the mount; an object's export is made once and shared."""

    def __init__(self, services: MountServices) -> None:
        self.services = services
        self._live: dict[int, DmaBuf] = {}
        self._lock = threading.Lock()

    def export(self, obj: GemObject) -> DmaBuf:
        """The object's dma-buf, made on first export; the exporter keeps it while it has handles."""
        with self._lock:
            if obj.dma_buf is None:
                obj.dma_buf = DmaBuf(obj, self).get("exporter")
                self._live[obj.dma_buf.id] = obj.dma_buf
            return obj.dma_buf

    def forget(self, dmabuf: DmaBuf) -> None:
        with self._lock:
            self._live.pop(dmabuf.id, None)

    def live(self) -> list[DmaBuf]:
        with self._lock:
            return list(self._live.values())


class DmaBufFile(CommandFile):
    """An open dma-buf: mmap, lseek(SEEK_END), poll and the DMA_BUF_* ioctls. Without
    passthrough, read(2) and write(2) reach it directly and fail as dma_buf_fops (which
    has neither) makes them fail; faults and write-back come through the page cache."""

    family = "dma_buf"
    shared_mmap = True

    def __init__(self, dmabuf: DmaBuf, nodeid: int) -> None:
        self.dmabuf = dmabuf.get("file")
        self.nodeid = nodeid
        self.backing_id = dmabuf.backing_id()
        self.direct_io = self.backing_id is None
        invalidate = None if self.backing_id is not None else dmabuf.services.invalidate
        self.cpu_view = CpuView(invalidate, nodeid)

    def pending_waits(self) -> PendingWaits:
        return self.dmabuf.services.pending

    def poll(self, req: Request, kh: int | None, events: int) -> int:
        """dma_buf_poll(): POLLIN once the writers are done, POLLOUT once everyone is; a poller
        that has to wait is woken when the fences it waits for signal."""
        resv = self.dmabuf.obj.resv
        ready = 0
        for bit, usage in ((select.POLLIN, Usage.WRITE), (select.POLLOUT, Usage.READ)):
            if not events & bit:
                continue
            pending = resv.fences(usage)
            if not pending:
                ready |= bit
            elif kh is not None:
                wait = wait_all(pending, None)
                if isinstance(wait, Completion):
                    wait.on_done(lambda _result, kh=kh: self.dmabuf.services.notify_poll(kh))
        return ready

    def read(self, req: Request, offset: int, size: int) -> bytes:
        """Page-cache faults of a mapping without passthrough; never short inside the BO."""
        if not req.page_cache:
            raise OSError(errno.EINVAL, "a dma-buf has no read()")
        if offset >= self.dmabuf.size:
            return b""
        return bytes(self.dmabuf.obj.memory.view()[offset: offset + size])

    def write(self, req: Request, offset: int, data: memoryview) -> int:
        """Write-back of dirty mapped pages into the BO."""
        if not req.page_cache:
            raise OSError(errno.EINVAL, "a dma-buf has no write()")
        end = min(offset + len(data), self.dmabuf.size)
        if offset >= end:
            raise OSError(errno.ENOSPC, "beyond the dma-buf")
        self.dmabuf.obj.memory.view()[offset:end] = data[: end - offset]
        doorbell.ring()  # the CPU wrote device memory: a semaphore word, maybe
        return end - offset

    def release(self) -> None:
        """A passthrough mapping holds the backing memfd, not this file, so the file can be
        released while mapped: its mapping then keeps the dma-buf, as a vma would."""
        if self.backing_id is not None:
            dmabuf = self.dmabuf.get("mapping")
            dmabuf.services.mappings.hold(NodeRange(self.nodeid, 0, dmabuf.size), lambda: dmabuf.put("mapping"))
        self.dmabuf.put("file")


@ioctl_handler("DMA_BUF_IOCTL_SYNC")
def dma_buf_sync(file: DmaBufFile, args: defs.dma_buf_sync, user: UserMemory) -> Result:
    """Bracket CPU access. START first waits for the device (the writers before a read,
    everyone before a write). With passthrough the mapping is the BO's own pages, coherent
    already; through the page cache, START and END drop the cached pages (writing dirty
    ones back), as BO_PREP/BO_FINI do for the device fd."""
    if args.flags & ~_SYNC_FLAGS.mask or not args.flags & defs.DMA_BUF_SYNC_RW:
        raise OSError(errno.EINVAL, "bad DMA_BUF_SYNC flags")
    obj = file.dmabuf.obj
    if args.flags & defs.DMA_BUF_SYNC_END:
        return file.cpu_view.end(obj, 0)
    usage = Usage.READ if args.flags & defs.DMA_BUF_SYNC_WRITE else Usage.WRITE
    return then(wait_all(obj.resv.fences(usage), None), lambda: file.cpu_view.begin(obj, 0))


def _sync_file_usage(flags: int) -> Usage:
    """dma_resv_usage_rw(): a writer conflicts with every user, a reader with the writers."""
    if flags & ~defs.DMA_BUF_SYNC_RW or not flags & defs.DMA_BUF_SYNC_RW:
        raise OSError(errno.EINVAL, "flags must be a non-empty subset of READ | WRITE")
    return Usage.READ if flags & defs.DMA_BUF_SYNC_WRITE else Usage.WRITE


@ioctl_handler("DMA_BUF_IOCTL_EXPORT_SYNC_FILE")
def export_sync_file(file: DmaBufFile, args: defs.dma_buf_export_sync_file, user: UserMemory) -> int:
    fences = file.dmabuf.obj.resv.fences(_sync_file_usage(args.flags))
    args.fd = sync_file.export(file.dmabuf.services, user.pid, merge(fences))
    return 0


@ioctl_handler("DMA_BUF_IOCTL_IMPORT_SYNC_FILE")
def import_sync_file(file: DmaBufFile, args: defs.dma_buf_import_sync_file, user: UserMemory) -> int:
    """The sync_file's fences join the dma-buf's: as writers with WRITE, else as readers."""
    usage = Usage.WRITE if _sync_file_usage(args.flags) == Usage.READ else Usage.READ
    fence = sync_file.fence_of(file.dmabuf.services, user.pid, args.fd)
    if fence is None:
        raise OSError(errno.EINVAL, "not a sync_file")
    for member in unwrap(fence):
        file.dmabuf.obj.resv.add(member, usage)
    return 0


@ioctl_handler("DMA_BUF_SET_NAME")
def dma_buf_set_name(file: DmaBufFile, args: defs.UapiStruct, user: UserMemory) -> int:
    name = user.read_string(args.name, defs.DMA_BUF_NAME_LEN - 1)
    file.dmabuf.name = name.decode(errors="replace")
    return 0
