"""What objects living in the device need from the mount that serves them.

Files of dma-bufs, syncobjs and sync_files are handed out as tickets; incoming
descriptors are recognised by the mount id and inode that /proc/self/fdinfo shows;
poll waiters are woken and page caches dropped through FUSE notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from emudev import trace
from emudev.drm.cpu_view import Invalidate
from emudev.drm.userfd import caller_fd_info
from emudev.gem.dmabuf import DmaBufRegistry
from emudev.gem.vma import MappingHolds
from emudev.nodes.defer import PendingWaits
from emudev.nodes.tickets import TicketDirectory
from emudev.nodes.tree import InodeTable


@dataclass
class MountServices:
    inodes: InodeTable
    tickets: TicketDirectory
    mount_id: int
    notify_poll: Callable[[int], None]
    invalidate: Invalidate | None
    backing_open: Callable[[int], int | None] | None
    backing_close: Callable[[int], None]
    mappings: MappingHolds
    dmabufs: DmaBufRegistry = field(init=False)
    pending: PendingWaits = field(default_factory=PendingWaits)

    def __post_init__(self) -> None:
        self.dmabufs = DmaBufRegistry(self)

    def issue_fd(self, caller_pid: int, target: object, opener: Callable[[int], object], size: int,
                 writable: bool, get: Callable[[], None], put: Callable[[], None]) -> int:
        """An outgoing descriptor for `target`: take a reference for the ticket, return its value.

        `opener(node_ino)` makes the open file once the ticket is claimed."""
        get()
        ticket = self.tickets.issue(caller_pid, target, lambda req, flags: opener(ticket.node.ino), size,
                                    writable, release=put)
        if (tracer := trace.active) is not None:
            tracer.fd_issued(ticket.value, target)
        return ticket.value

    def identify(self, pid: int, fd: int) -> object | None:
        """The object (dma-buf, syncobj, sync_file) behind the caller's descriptor, or None;
        EBADF if the caller has no such descriptor."""
        target = self._identify(pid, fd)
        if (tracer := trace.active) is not None:
            tracer.fd_identified(fd, target)
        return target

    def _identify(self, pid: int, fd: int) -> object | None:
        fields = caller_fd_info(pid, fd)
        if int(fields.get("mnt_id", -1)) != self.mount_id:
            return None
        try:
            node = self.inodes.get(int(fields.get("ino", 0)))
        except OSError:
            return None
        return getattr(node, "target", None)
