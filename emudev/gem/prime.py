"""PRIME: GEM handles to dma-buf fds and back (drm_prime.c)."""

from __future__ import annotations

import errno

from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.gem.dmabuf import DmaBuf, DmaBufFile
from emudev.gem.gem import handle_create, lookup
from emudev.gem.object import GemObject
from emudev.nodes.services import MountServices
from emudev.uapi import defs

_EXPORT_FLAGS = defs.FLAGSETS["drm_prime_handle_flags"]


def export_fd(mount: MountServices, dmabuf: DmaBuf, caller_pid: int, flags: int) -> int:
    """A ticket for a new open of `dmabuf` (the outgoing-fd convention of the uapi)."""
    return mount.issue_fd(caller_pid, dmabuf, lambda ino: DmaBufFile(dmabuf, ino), dmabuf.size,
                          bool(flags & defs.DRM_RDWR), get=lambda: dmabuf.get("ticket"),
                          put=lambda: dmabuf.put("ticket"))


@ioctl_handler("DRM_IOCTL_PRIME_HANDLE_TO_FD")
def handle_to_fd(file: DrmFile, args: defs.drm_prime_handle, user: UserMemory) -> int:
    if args.flags & ~_EXPORT_FLAGS.mask:
        raise OSError(errno.EINVAL, "unknown PRIME flags")
    mount = file.device.mounted()
    obj = lookup(file, args.handle)
    dmabuf = obj.import_attach or mount.dmabufs.export(obj)
    file.prime[args.handle] = dmabuf
    file.prime_handles[dmabuf] = args.handle
    args.fd = export_fd(mount, dmabuf, user.pid, args.flags)
    return 0


@ioctl_handler("DRM_IOCTL_PRIME_FD_TO_HANDLE")
def fd_to_handle(file: DrmFile, args: defs.drm_prime_handle, user: UserMemory) -> int:
    """The kernel ignores `flags` here; the fd must exist (EBADF) and be a dma-buf (EINVAL)."""
    mount = file.device.mounted()
    dmabuf = mount.identify(user.pid, args.fd)
    if not isinstance(dmabuf, DmaBuf):
        raise OSError(errno.EINVAL, "not a dma-buf")
    known = file.prime_handles.get(dmabuf)
    if known is not None:
        args.handle = known
        return 0
    obj = _import(file, dmabuf)
    args.handle = handle_create(file, obj)
    if obj.dma_buf is None and dmabuf.obj is obj:
        obj.dma_buf = dmabuf.get("exporter")  # our own export, cached again as drm_gem_prime_fd_to_handle() does
    file.prime[args.handle] = dmabuf
    file.prime_handles[dmabuf] = args.handle
    return 0


def _import(file: DrmFile, dmabuf: DmaBuf) -> GemObject:
    """drm_gem_prime_import(): our own export gives the original object back; another
    device's gives an object of this device over the same memory."""
    exporter = dmabuf.obj
    if exporter.device is file.device.gem:
        return exporter
    return file.device.gem.wrap_import(exporter, dmabuf.get("import"),
                                       mappable=bool(exporter.flags & defs.DRM_EMUDEV_BO_MAPPABLE))
