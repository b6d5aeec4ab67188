"""PRIME: GEM handles to dma-buf fds and back (drm_prime.c)."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.userfd import caller_fd
from emudev.drm.usermem import UserMemory
from emudev.gem.dmabuf import DmaBuf, DmaBufFile, DmaBufRegistry, identify
from emudev.gem.gem import handle_create, lookup
from emudev.gem.object import GemObject
from emudev.nodes.tickets import TicketDirectory
from emudev.uapi import defs

_EXPORT_FLAGS = defs.FLAGSETS["drm_prime_handle_flags"]


@dataclass
class Prime:
    """The mount-wide pieces PRIME needs: where dma-bufs are registered and tickets issued."""

    registry: DmaBufRegistry
    tickets: TicketDirectory
    mount_id: int


def _services(file: DrmFile) -> Prime:
    prime = file.device.prime
    if prime is None:
        raise OSError(errno.ENODEV, "the device is not mounted")
    return prime


def export_fd(prime: Prime, dmabuf: DmaBuf, caller_pid: int, flags: int) -> int:
    """A ticket for a new open of `dmabuf` (the outgoing-fd convention of the uapi)."""
    dmabuf.get("ticket")
    ticket = prime.tickets.issue(caller_pid, lambda req, open_flags: DmaBufFile(dmabuf, ticket.node.ino),
                                 dmabuf.size, bool(flags & defs.DRM_RDWR), release=lambda: dmabuf.put("ticket"))
    prime.registry.add_inode(dmabuf, ticket.node.ino)
    return ticket.value


@ioctl_handler("DRM_IOCTL_PRIME_HANDLE_TO_FD")
def handle_to_fd(file: DrmFile, args: defs.drm_prime_handle, user: UserMemory) -> int:
    if args.flags & ~_EXPORT_FLAGS.mask:
        raise OSError(errno.EINVAL, "unknown PRIME flags")
    prime = _services(file)
    obj = lookup(file, args.handle)
    dmabuf = obj.import_attach or prime.registry.export(obj)
    file.prime[args.handle] = dmabuf
    file.prime_handles[dmabuf] = args.handle
    args.fd = export_fd(prime, dmabuf, user.pid, args.flags)
    return 0


@ioctl_handler("DRM_IOCTL_PRIME_FD_TO_HANDLE")
def fd_to_handle(file: DrmFile, args: defs.drm_prime_handle, user: UserMemory) -> int:
    """The kernel ignores `flags` here; the fd must exist (EBADF) and be a dma-buf (EINVAL)."""
    prime = _services(file)
    with caller_fd(user.pid, args.fd) as fd:
        dmabuf = identify(fd, prime.mount_id, prime.registry)
    if dmabuf is None:
        raise OSError(errno.EINVAL, "not a dma-buf")
    known = file.prime_handles.get(dmabuf)
    if known is not None:
        args.handle = known
        return 0
    args.handle = handle_create(file, _import(file, dmabuf))
    file.prime[args.handle] = dmabuf
    file.prime_handles[dmabuf] = args.handle
    return 0


def _import(file: DrmFile, dmabuf: DmaBuf) -> GemObject:
    """drm_gem_prime_import(): our own export gives the original object back; another
    device's gives an object of this device over the same memory."""
    exporter = dmabuf.obj
    if exporter.device is file.device.gem:
        return exporter
    gem = file.device.gem
    return gem.wrap_import(dmabuf.size, exporter.flags, exporter.memory, dmabuf.get("import"),
                           mappable=bool(exporter.flags & defs.DRM_EMUDEV_BO_MAPPABLE))
