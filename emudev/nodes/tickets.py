"""Outgoing file descriptors: tickets claimed by opening MOUNT/fd/<n>.

No FUSE reply can install a descriptor in the caller, so an ioctl that creates one
(PRIME export, sync_file export, ...) hands out a ticket instead, and the caller's
open() of the ticket's node makes the real descriptor (the convention is part of
the uapi, see the emudev family doc). A ticket can be claimed once, only by the
process it was issued to, and only for a while: nobody else can reach the object
through it, and an unclaimed one does not keep its object alive for long.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from emudev.drm.file import thread_group
from emudev.fuse import Request
from emudev.nodes.tree import DeviceFile, Directory, InodeTable, OpenFile
from emudev.uapi import defs

log = logging.getLogger("emudev.tickets")

TIMEOUT = defs.DRM_EMUDEV_FD_TICKET_TIMEOUT_MS / 1000
Opener = Callable[[Request, int], OpenFile]


@dataclass(eq=False)
class Ticket:
    number: int
    owner_tgid: int
    writable: bool
    node: DeviceFile
    release: Callable[[], None]  # drops the reference the ticket holds; called exactly once
    issued: float = field(default_factory=time.monotonic)

    @property
    def value(self) -> int:
        """The (negative, never a valid fd) number stored in the ioctl's fd field."""
        return -self.number


class TicketDirectory(Directory):
    """MOUNT/fd: resolves ticket numbers to one-shot nodes for the processes they belong to."""

    def __init__(self, inodes: InodeTable) -> None:
        super().__init__(name="fd", mode=stat.S_IFDIR | 0o711)
        self.inodes = inodes
        self._tickets: dict[int, Ticket] = {}
        self._numbers = itertools.count(-defs.DRM_EMUDEV_FD_TICKET_MAX)
        self._lock = threading.Lock()

    def issue(self, caller_pid: int, target: object, opener: Opener, size: int, writable: bool,
              release: Callable[[], None]) -> Ticket:
        """A ticket for a file of `target` opened by `opener`; its `value` is what the ioctl
        stores in its fd field. The node keeps naming `target`, which is how a descriptor of
        that file is recognised when a client passes it back in."""
        self.sweep()
        number = next(self._numbers)
        node = DeviceFile(name=str(number), mode=stat.S_IFREG | 0o666, file_size=size, transient=True,
                          entry_timeout=0.0, target=target)
        ticket = Ticket(number, thread_group(caller_pid), writable, node, release)
        node.opener = self._once(ticket, opener)
        self.inodes.add(self, node, listed=False)
        with self._lock:
            self._tickets[number] = ticket
        return ticket

    def resolve(self, req: Request, name: str) -> DeviceFile:
        """LOOKUP of fd/<n>: the ticket's node, for its owner only."""
        with self._lock:
            ticket = self._tickets.get(int(name)) if name.isdigit() else None
        if ticket is None or ticket.owner_tgid != thread_group(req.pid):
            raise OSError(errno.ENOENT, "no such ticket")
        return ticket.node

    def _claim(self, ticket: Ticket) -> bool:
        with self._lock:
            if self._tickets.pop(ticket.number, None) is None:
                return False
        self.inodes.unlink(ticket.node)
        return True

    def _once(self, ticket: Ticket, opener: Opener) -> Opener:
        """The node's opener: the first open by the owner with an allowed mode claims the ticket."""

        def open_once(req: Request, flags: int) -> OpenFile:
            if thread_group(req.pid) != ticket.owner_tgid:
                raise OSError(errno.EACCES, "not the ticket's process")
            if (flags & os.O_ACCMODE) != os.O_RDONLY and not ticket.writable:
                raise OSError(errno.EACCES, "the object was exported without DRM_RDWR")
            if not self._claim(ticket):
                raise OSError(errno.ENOENT, "ticket already claimed or expired")
            try:
                return opener(req, flags)
            finally:
                ticket.release()

        return open_once

    def sweep(self) -> None:
        """Expire tickets past their time or whose process is gone."""
        now = time.monotonic()
        with self._lock:
            stale = [t for t in self._tickets.values()
                     if now - t.issued > TIMEOUT or not os.path.exists(f"/proc/{t.owner_tgid}")]
            for t in stale:
                del self._tickets[t.number]
        for t in stale:
            self.inodes.unlink(t.node)
            t.release()
        if stale:
            log.debug("expired %d unclaimed ticket(s)", len(stale))
