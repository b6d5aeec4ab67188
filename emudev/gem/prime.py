"""PRIME: GEM handles to dma-buf fds and back (drm_prime.c)."""

from __future__ import annotations

import errno

from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.userfd import caller_fd
from emudev.drm.usermem import UserMemory
from emudev.uapi import defs

_EXPORT_FLAGS = defs.FLAGSETS["drm_prime_handle_flags"]


@ioctl_handler("DRM_IOCTL_PRIME_HANDLE_TO_FD")
def handle_to_fd(file: DrmFile, args: defs.drm_prime_handle, user: UserMemory) -> int:
    if args.flags & ~_EXPORT_FLAGS.mask:
        raise OSError(errno.EINVAL, "unknown PRIME flags")
    if file.objects.lookup(args.handle) is None:
        raise OSError(errno.ENOENT, "no such GEM handle")
    raise OSError(errno.ENOENT, "no such GEM handle")


@ioctl_handler("DRM_IOCTL_PRIME_FD_TO_HANDLE")
def fd_to_handle(file: DrmFile, args: defs.drm_prime_handle, user: UserMemory) -> int:
    """The kernel ignores `flags` here; the fd must be a dma-buf (EINVAL) and exist (EBADF)."""
    with caller_fd(user.pid, args.fd):
        raise OSError(errno.EINVAL, "not a dma-buf")
