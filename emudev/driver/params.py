"""DRM_IOCTL_EMUDEV_GET_PARAM: what userspace learns about the device before using it."""

from __future__ import annotations

import errno
import mmap
from collections.abc import Callable, Iterable

from emudev.drm.device import DrmDevice
from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.engine.vm import VA_END, VA_START
from emudev.uapi import defs


def _mask(bits: Iterable[int]) -> int:
    return sum(1 << bit for bit in bits)


_PARAMS: dict[int, Callable[[DrmDevice], int]] = {
    defs.DRM_EMUDEV_PARAM_DEVICE_ID: lambda dev: defs.DRM_EMUDEV_PCI_DEVICE_ID,
    defs.DRM_EMUDEV_PARAM_REVISION: lambda dev: defs.DRM_EMUDEV_REVISION,
    defs.DRM_EMUDEV_PARAM_DEVICE_INDEX: lambda dev: dev.index,
    defs.DRM_EMUDEV_PARAM_MEMORY_SIZE: lambda dev: dev.config.memory_size,
    defs.DRM_EMUDEV_PARAM_UAPI_VERSION: lambda dev: defs.DRM_EMUDEV_UAPI_VERSION,
    defs.DRM_EMUDEV_PARAM_PAGE_SIZE: lambda dev: mmap.PAGESIZE,
    defs.DRM_EMUDEV_PARAM_ISA_VERSION: lambda dev: defs.DRM_EMUDEV_ISA_VERSION,
    defs.DRM_EMUDEV_PARAM_ENGINES: lambda dev: _mask(defs.ENUMS["drm_emudev_engine"].members.values()),
    defs.DRM_EMUDEV_PARAM_DTYPES: lambda dev: _mask(defs.ENUMS["drm_emudev_dtype"].members.values()),
    defs.DRM_EMUDEV_PARAM_MAX_TENSOR_DIM: lambda dev: defs.DRM_EMUDEV_MAX_TENSOR_DIM,
    defs.DRM_EMUDEV_PARAM_VA_START: lambda dev: VA_START,
    defs.DRM_EMUDEV_PARAM_VA_END: lambda dev: VA_END,
    defs.DRM_EMUDEV_PARAM_MAX_CMD_SIZE: lambda dev: defs.DRM_EMUDEV_MAX_CMD_SIZE,
    defs.DRM_EMUDEV_PARAM_JOB_TIMEOUT_MS: lambda dev: dev.config.job_timeout_ms,
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
