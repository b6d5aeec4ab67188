"""DRM_IOCTL_EMUDEV_GET_PARAM: what userspace learns about the device before using it."""

from __future__ import annotations

import errno
import mmap
from collections.abc import Callable

from emudev.drm.device import DrmDevice
from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.uapi import defs

_PARAMS: dict[int, Callable[[DrmDevice], int]] = {
    defs.DRM_EMUDEV_PARAM_DEVICE_ID: lambda dev: defs.DRM_EMUDEV_PCI_DEVICE_ID,
    defs.DRM_EMUDEV_PARAM_REVISION: lambda dev: defs.DRM_EMUDEV_REVISION,
    defs.DRM_EMUDEV_PARAM_DEVICE_INDEX: lambda dev: dev.index,
    defs.DRM_EMUDEV_PARAM_MEMORY_SIZE: lambda dev: dev.config.memory_size,
    defs.DRM_EMUDEV_PARAM_UAPI_VERSION: lambda dev: defs.DRM_EMUDEV_UAPI_VERSION,
    defs.DRM_EMUDEV_PARAM_PAGE_SIZE: lambda dev: mmap.PAGESIZE,
}


@ioctl_handler("DRM_IOCTL_EMUDEV_GET_PARAM")
def get_param(file: DrmFile, args: defs.drm_emudev_param, user: UserMemory) -> int:
    answer = _PARAMS.get(args.param)
    if answer is None:
        raise OSError(errno.EINVAL, "unknown param")
    if args.index != 0:
        raise OSError(errno.EINVAL, "param takes no index")
    args.value = answer(file.device)
    return 0
