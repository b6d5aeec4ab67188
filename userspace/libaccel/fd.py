"""Outgoing file descriptors: turning an ioctl's fd ticket into a real descriptor.

See the emudev uapi (family doc): an ioctl that returns a new fd stores a ticket
(≤ DRM_EMUDEV_FD_TICKET_MAX) that the caller claims by opening MOUNT/fd/<-ticket>.
Real hardware returns the descriptor itself, which is passed through unchanged.
"""

from __future__ import annotations

import errno
import os

from emudev.uapi import defs


def claim_fd(device_fd: int, value: int, flags: int, mount_levels: int = 2) -> int:
    """The descriptor an ioctl on `device_fd` returned in an fd field, asked with
    DRM_CLOEXEC/DRM_RDWR `flags`. The mount is `mount_levels` directories above the file
    `device_fd` is open on: two for MOUNT/accel/accelN, one for files at the mount's top
    (MOUNT/sw_sync) and for sync_files (MOUNT/fd/n)."""
    if value >= 0:
        return value
    if value > defs.DRM_EMUDEV_FD_TICKET_MAX:
        raise OSError(errno.EINVAL, f"fd field holds {value}: neither a descriptor nor a ticket")
    mount = os.readlink(f"/proc/self/fd/{device_fd}")
    for _ in range(mount_levels):
        mount = os.path.dirname(mount)
    mode = os.O_RDWR if flags & defs.DRM_RDWR else os.O_RDONLY
    cloexec = os.O_CLOEXEC if flags & defs.DRM_CLOEXEC else 0
    return os.open(os.path.join(mount, "fd", str(-value)), mode | cloexec)


class FdFile:
    """A descriptor this process owns: close() or a `with` block releases it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> FdFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
