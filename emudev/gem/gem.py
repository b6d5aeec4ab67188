"""GEM handles and the BO ioctls (drm_gem.c and this driver's BO interface)."""

from __future__ import annotations

import errno
import logging

from emudev import check
from emudev.driver.fault_inject import enomem
from emudev.drm.file import DrmFile
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.gem.memory import page_align
from emudev.gem.object import GemObject
from emudev.sync.fence_wait import Result, then, wait_all
from emudev.sync.resv import Usage
from emudev.uapi import defs

log = logging.getLogger("emudev.gem")

INT_MAX = (1 << 31) - 1  # idr numbers are ints
_BO_FLAGS = defs.FLAGSETS["drm_emudev_bo_flags"]
_PREP_FLAGS = defs.FLAGSETS["drm_emudev_bo_prep_flags"]


def handle_create(file: DrmFile, obj: GemObject) -> int:
    """drm_gem_handle_create(): a new handle in `file`, holding a reference."""
    obj.get("handle")
    obj.handle_count += 1
    handle = file.objects.insert(obj)
    file.vm.map(obj)
    if check.active is not None:
        check.active.handle_reused(file, handle)
    return handle


def _handle_release(file: DrmFile, handle: int, obj: GemObject) -> None:
    """What drm_gem_object_release_handle() undoes when a handle goes."""
    dmabuf = file.prime.pop(handle, None)
    if dmabuf is not None:
        file.prime_handles.pop(dmabuf, None)
    file.vm.unmap(obj)
    if file.mappings is not None and not file.vm.address_of(obj):
        file.mappings.handle_gone(obj)
    obj.handle_count -= 1
    if obj.handle_count == 0:
        _last_handle_gone(obj)
    obj.put("handle")


def _last_handle_gone(obj: GemObject) -> None:
    """drm_gem_object_handle_free(): the flink name and the cached export go with the last handle."""
    if obj.name:
        obj.device.names.remove(obj.name)
        obj.name = 0
    if obj.dma_buf is not None:
        obj.dma_buf.put("exporter")  # drm_gem_object_exported_dma_buf_free()
        obj.dma_buf = None


def handle_delete(file: DrmFile, handle: int) -> bool:
    obj = file.objects.remove(handle)
    if obj is None:
        return False
    _handle_release(file, handle, obj)
    return True


def lookup(file: DrmFile, handle: int, missing: int = errno.ENOENT) -> GemObject:
    obj = file.objects.lookup(handle)
    if obj is None:
        raise OSError(missing, "no such GEM handle")
    return obj


def release_file(file: DrmFile) -> None:
    """drm_gem_release(): a closed file drops every handle it had."""
    for handle, obj in file.objects.items():
        file.objects.remove(handle)
        _handle_release(file, handle, obj)


@ioctl_handler("DRM_IOCTL_GEM_CLOSE")
def gem_close(file: DrmFile, args: defs.drm_gem_close, user: UserMemory) -> int:
    """The pad is not checked, as in drm_gem_close_ioctl()."""
    if not handle_delete(file, args.handle):
        raise OSError(errno.EINVAL, "no such GEM handle")
    if check.active is not None:
        check.active.handle_closed(file, args.handle, "GEM_CLOSE")
    return 0


@ioctl_handler("DRM_IOCTL_GEM_FLINK")
def gem_flink(file: DrmFile, args: defs.drm_gem_flink, user: UserMemory) -> int:
    obj = lookup(file, args.handle)
    if not obj.name:
        obj.name = obj.device.names.insert(obj)
    args.name = obj.name
    return 0


@ioctl_handler("DRM_IOCTL_GEM_OPEN")
def gem_open(file: DrmFile, args: defs.drm_gem_open, user: UserMemory) -> int:
    obj = file.device.gem.names.lookup(args.name)
    if obj is None:
        raise OSError(errno.ENOENT, "no such flink name")
    args.handle = handle_create(file, obj)
    args.size = obj.size
    return 0


@ioctl_handler("DRM_IOCTL_GEM_CHANGE_HANDLE")
def gem_change_handle(file: DrmFile, args: defs.drm_gem_change_handle, user: UserMemory) -> int:
    """Move a handle to another number (for CRIU restore); ENOSPC if that number is taken."""
    if args.new_handle > INT_MAX:  # checked first, as the kernel does: idr numbers are ints
        raise OSError(errno.EINVAL, "new_handle is above INT_MAX")
    obj = lookup(file, args.handle)
    if args.handle == args.new_handle:
        return 0
    if args.new_handle == 0:
        raise OSError(errno.EINVAL, "handle 0 is never valid")
    if not file.objects.insert_at(args.new_handle, obj):
        raise OSError(errno.ENOSPC, "new handle in use")
    file.objects.remove(args.handle)
    dmabuf = file.prime.pop(args.handle, None)
    if dmabuf is not None:
        file.prime[args.new_handle] = dmabuf
        file.prime_handles[dmabuf] = args.new_handle
    return 0


@ioctl_handler("DRM_IOCTL_EMUDEV_BO_CREATE")
def bo_create(file: DrmFile, args: defs.drm_emudev_bo_create, user: UserMemory) -> int:
    if args.size == 0 or page_align(args.size) >= 1 << 64:
        raise OSError(errno.EINVAL, "bad BO size")
    if args.flags & ~_BO_FLAGS.mask:
        raise OSError(errno.EINVAL, "unknown BO flags")
    size = page_align(args.size)
    if file.device.inject.take_alloc_failure():
        raise enomem()
    obj = file.device.gem.create(size, args.flags, mappable=bool(args.flags & defs.DRM_EMUDEV_BO_MAPPABLE))
    args.handle = handle_create(file, obj)
    args.size = size
    return 0


@ioctl_handler("DRM_IOCTL_EMUDEV_BO_INFO")
def bo_info(file: DrmFile, args: defs.drm_emudev_bo_info, user: UserMemory) -> int:
    obj = lookup(file, args.handle)
    args.flags = obj.flags
    args.size = obj.size
    args.device_va = file.vm.address_of(obj)
    args.mmap_offset = obj.mmap_offset
    return 0


@ioctl_handler("DRM_IOCTL_EMUDEV_BO_WAIT")
def bo_wait(file: DrmFile, args: defs.drm_emudev_bo_wait, user: UserMemory) -> Result:
    """Every fence of the BO, readers and writers alike (drm_gem_dma_resv_wait)."""
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    obj = lookup(file, args.handle)
    return wait_all(obj.resv.fences(Usage.BOOKKEEP), args.timeout_ns)


@ioctl_handler("DRM_IOCTL_EMUDEV_BO_PREP")
def bo_prep(file: DrmFile, args: defs.drm_emudev_bo_prep, user: UserMemory) -> Result:
    """A reader waits for the device's writers, a writer for every device user; then the
    CPU view is made current."""
    if not args.flags or args.flags & ~_PREP_FLAGS.mask:
        raise OSError(errno.EINVAL, "bad PREP flags")
    obj = lookup(file, args.handle)
    usage = Usage.READ if args.flags & defs.DRM_EMUDEV_PREP_WRITE else Usage.WRITE
    return then(wait_all(obj.resv.fences(usage), args.timeout_ns), lambda: file.cpu_view.begin(obj))


@ioctl_handler("DRM_IOCTL_EMUDEV_BO_FINI")
def bo_fini(file: DrmFile, args: defs.drm_emudev_bo_fini, user: UserMemory) -> Result:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    obj = lookup(file, args.handle)
    if check.active is not None:
        check.active.cpu_access_ended(file, obj)
    return file.cpu_view.end(obj)
