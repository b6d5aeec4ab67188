"""The DRM core ioctls that are not about objects: drm_ioctl.c's version and caps."""

from __future__ import annotations

import errno
from collections.abc import Callable

from emudev.drm.device import DrmDevice
from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.uapi import defs

# drm_getcap(): the caps every driver answers; the rest need DRIVER_MODESET.
_CAPS: dict[int, Callable[[DrmDevice], int]] = {
    defs.DRM_CAP_TIMESTAMP_MONOTONIC: lambda dev: 1,
    defs.DRM_CAP_PRIME: lambda dev: defs.DRM_PRIME_CAP_IMPORT | defs.DRM_PRIME_CAP_EXPORT,
    defs.DRM_CAP_SYNCOBJ: lambda dev: int(dev.has_feature("syncobj")),
    defs.DRM_CAP_SYNCOBJ_TIMELINE: lambda dev: int(dev.has_feature("syncobj_timeline")),
}
DRM_CLIENT_NAME_MAX_LEN = 64


def _copy_field(user: UserMemory, address: int, capacity: int, value: str) -> int:
    """drm_copy_field(): copy what fits, no NUL, and report the full length back."""
    data = value.encode()
    chunk = data[:capacity]
    if chunk and address:
        user.write(address, chunk)
    return len(data)


@ioctl_handler("DRM_IOCTL_VERSION")
def version(file: DrmFile, args: defs.drm_version, user: UserMemory) -> int:
    driver = defs.DRIVER
    args.version_major = driver["major"]
    args.version_minor = driver["minor"]
    args.version_patchlevel = driver["patchlevel"]
    args.name_len = _copy_field(user, args.name, args.name_len, driver["name"])
    args.date_len = _copy_field(user, args.date, args.date_len, driver["date"])
    args.desc_len = _copy_field(user, args.desc, args.desc_len, driver["desc"])
    return 0


@ioctl_handler("DRM_IOCTL_GET_CAP")
def get_cap(file: DrmFile, args: defs.drm_get_cap, user: UserMemory) -> int:
    args.value = 0
    answer = _CAPS.get(args.capability)
    if answer is None:
        raise OSError(errno.EOPNOTSUPP, "cap needs a KMS driver")
    args.value = answer(file.device)
    return 0


@ioctl_handler("DRM_IOCTL_SET_CLIENT_NAME")
def set_client_name(file: DrmFile, args: defs.drm_set_client_name, user: UserMemory) -> int:
    """drm_set_client_name(): printable, no spaces, at most 64 bytes; length 0 clears it."""
    length = args.name_len
    if length > DRM_CLIENT_NAME_MAX_LEN:
        raise OSError(errno.EINVAL, "client name too long")
    if length == 0:
        file.client_name = None
        return 0
    name = user.read(args.name, length)
    if not all(0x21 <= b <= 0x7E for b in name):
        raise OSError(errno.EINVAL, "client name must be printable without spaces")
    file.client_name = name.decode("ascii")
    return 0
