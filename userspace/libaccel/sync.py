"""Fences from userspace: syncobjs (binary and timeline), sync_files, the sw_sync timeline."""

from __future__ import annotations

import ctypes
import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emudev.uapi import defs
from userspace.libaccel.fd import FdFile, claim_fd
from userspace.libaccel.ioctl import drm_ioctl

if TYPE_CHECKING:
    from userspace.libaccel.device import Device

WAIT_ALL = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
WAIT_FOR_SUBMIT = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
WAIT_AVAILABLE = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
NO_TIMEOUT = 0x7FFFFFFFFFFFFFFF


def abs_timeout(seconds: float) -> int:
    """An absolute CLOCK_MONOTONIC deadline `seconds` from now, as every DRM wait takes."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int(seconds * 1e9)


def _u32_array(values: Sequence[int]) -> ctypes.Array:
    return (ctypes.c_uint32 * max(len(values), 1))(*values)


def _u64_array(values: Sequence[int]) -> ctypes.Array:
    return (ctypes.c_uint64 * max(len(values), 1))(*values)


class Syncobj:
    """A syncobj handle of one device file."""

    def __init__(self, device: Device, handle: int) -> None:
        self.device = device
        self.handle = handle

    @classmethod
    def create(cls, device: Device, signaled: bool = False) -> Syncobj:
        args = defs.drm_syncobj_create(flags=defs.DRM_SYNCOBJ_CREATE_SIGNALED if signaled else 0)
        device.ioctl("DRM_IOCTL_SYNCOBJ_CREATE", args)
        return cls(device, args.handle)

    def __enter__(self) -> Syncobj:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def destroy(self) -> None:
        if self.handle:
            self.device.ioctl("DRM_IOCTL_SYNCOBJ_DESTROY", defs.drm_syncobj_destroy(handle=self.handle))
            self.handle = 0

    def _array(self, name: str) -> None:
        handles = _u32_array([self.handle])
        self.device.ioctl(name, defs.drm_syncobj_array(handles=ctypes.addressof(handles), count_handles=1))

    def reset(self) -> None:
        self._array("DRM_IOCTL_SYNCOBJ_RESET")

    def signal(self, point: int = 0) -> None:
        if point:
            signal_points([self], [point])
        else:
            self._array("DRM_IOCTL_SYNCOBJ_SIGNAL")

    def wait(self, point: int = 0, timeout_ns: int = NO_TIMEOUT, flags: int = 0) -> None:
        wait([self], [point], timeout_ns=timeout_ns, flags=flags)

    def query(self, last_submitted: bool = False) -> int:
        return query([self], last_submitted)[0]

    def transfer_from(self, src: Syncobj, src_point: int = 0, dst_point: int = 0, flags: int = 0) -> None:
        """Put the fence of `src_point` of `src` at `dst_point` of this syncobj (0: binary)."""
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_TRANSFER", defs.drm_syncobj_transfer(
            src_handle=src.handle, dst_handle=self.handle, src_point=src_point, dst_point=dst_point, flags=flags))

    def export(self) -> int:
        """An opaque syncobj fd, to share the syncobj itself with another process."""
        args = defs.drm_syncobj_handle(handle=self.handle)
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", args)
        return claim_fd(self.device.fd, args.fd, defs.DRM_CLOEXEC | defs.DRM_RDWR)

    @classmethod
    def import_fd(cls, device: Device, fd: int) -> Syncobj:
        args = defs.drm_syncobj_handle(fd=fd)
        device.ioctl("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE", args)
        return cls(device, args.handle)

    def export_sync_file(self, point: int = 0) -> SyncFile:
        flags = defs.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
        if point:
            flags |= defs.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE
        args = defs.drm_syncobj_handle(handle=self.handle, flags=flags, point=point)
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", args)
        return SyncFile(claim_fd(self.device.fd, args.fd, defs.DRM_CLOEXEC))

    def import_sync_file(self, sync_file: SyncFile, point: int = 0) -> None:
        flags = defs.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
        if point:
            flags |= defs.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE", defs.drm_syncobj_handle(
            handle=self.handle, flags=flags, fd=sync_file.fd, point=point))

    def eventfd(self, efd: int, point: int = 0, available: bool = False) -> None:
        """Have the eventfd `efd` count 1 when `point` signals (or gets a fence, if `available`)."""
        self.device.ioctl("DRM_IOCTL_SYNCOBJ_EVENTFD", defs.drm_syncobj_eventfd(
            handle=self.handle, point=point, fd=efd, flags=WAIT_AVAILABLE if available else 0))


def wait(syncobjs: Sequence[Syncobj], points: Sequence[int] | None = None, timeout_ns: int = NO_TIMEOUT,
         flags: int = 0, deadline_ns: int = 0) -> int:
    """TIMELINE_WAIT on all `syncobjs` of one device; returns first_signaled.

    Raises OSError ETIME at the absolute timeout; EINTR is retried with the same deadline."""
    device = syncobjs[0].device
    handles = _u32_array([s.handle for s in syncobjs])
    pts = _u64_array(points or [0] * len(syncobjs))
    if deadline_ns:
        flags |= defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
    args = defs.drm_syncobj_timeline_wait(handles=ctypes.addressof(handles), points=ctypes.addressof(pts),
                                          timeout_nsec=timeout_ns, count_handles=len(syncobjs), flags=flags,
                                          deadline_nsec=deadline_ns)
    device.ioctl("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT", args)
    return args.first_signaled


def signal_points(syncobjs: Sequence[Syncobj], points: Sequence[int]) -> None:
    handles = _u32_array([s.handle for s in syncobjs])
    pts = _u64_array(points)
    syncobjs[0].device.ioctl("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", defs.drm_syncobj_timeline_array(
        handles=ctypes.addressof(handles), points=ctypes.addressof(pts), count_handles=len(syncobjs)))


def query(syncobjs: Sequence[Syncobj], last_submitted: bool = False) -> list[int]:
    handles = _u32_array([s.handle for s in syncobjs])
    pts = _u64_array([0] * len(syncobjs))
    flags = defs.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED if last_submitted else 0
    syncobjs[0].device.ioctl("DRM_IOCTL_SYNCOBJ_QUERY", defs.drm_syncobj_timeline_array(
        handles=ctypes.addressof(handles), points=ctypes.addressof(pts), count_handles=len(syncobjs), flags=flags))
    return list(pts[: len(syncobjs)])


@dataclass(frozen=True)
class FenceInfo:
    timeline: str
    driver: str
    status: int
    timestamp_ns: int


class SyncFile(FdFile):
    """A sync_file descriptor this process owns."""

    def __enter__(self) -> SyncFile:
        return self

    def _ioctl(self, name: str, args: defs.UapiStruct) -> None:
        drm_ioctl(self.fd, defs.IOCTLS_BY_NAME[name], args)

    def merge(self, other: SyncFile, name: str = "merged") -> SyncFile:
        args = defs.sync_merge_data(fd2=other.fd)
        args.name = name.encode()[:31]
        self._ioctl("SYNC_IOC_MERGE", args)
        return SyncFile(claim_fd(self.fd, args.fence, defs.DRM_CLOEXEC))

    def info(self) -> tuple[str, int, list[FenceInfo]]:
        """(name, status, fences): status 1 signalled, 0 active, <0 the first error."""
        args = defs.sync_file_info()
        self._ioctl("SYNC_IOC_FILE_INFO", args)
        count = args.num_fences
        infos = (defs.sync_fence_info * count)()
        args.sync_fence_info = ctypes.addressof(infos)
        self._ioctl("SYNC_IOC_FILE_INFO", args)
        fences = [FenceInfo(bytes(i.obj_name).rstrip(b"\0").decode(), bytes(i.driver_name).rstrip(b"\0").decode(),
                            i.status, i.timestamp_ns) for i in infos]
        return bytes(args.name).rstrip(b"\0").decode(), args.status, fences

    def set_deadline(self, deadline_ns: int) -> None:
        self._ioctl("SYNC_IOC_SET_DEADLINE", defs.sync_set_deadline(deadline_ns=deadline_ns))

    def wait(self, timeout: float | None = None) -> bool:
        """poll() for POLLIN; True once signalled."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(None if timeout is None else int(timeout * 1000)))


class SwSyncTimeline(FdFile):
    """The sw_sync debug timeline of a mount: fences that signal when told to; closing it
    signals every pending point with -ENOENT."""

    def __init__(self, mountpoint: str) -> None:
        super().__init__(os.open(os.path.join(mountpoint, "sw_sync"), os.O_RDWR | os.O_CLOEXEC))

    @classmethod
    def open(cls, mountpoint: str | None = None) -> SwSyncTimeline:
        """The timeline of `mountpoint`, or of $EMUDEV_MOUNT."""
        where = mountpoint or os.environ.get("EMUDEV_MOUNT")
        if not where:
            raise FileNotFoundError("no mountpoint given and EMUDEV_MOUNT is not set")
        return cls(where)

    def __enter__(self) -> SwSyncTimeline:
        return self

    def fence(self, value: int, name: str = "sw_sync") -> SyncFile:
        args = defs.sw_sync_create_fence_data(value=value)
        args.name = name.encode()[:31]
        drm_ioctl(self.fd, defs.IOCTLS_BY_NAME["SW_SYNC_IOC_CREATE_FENCE"], args)
        return SyncFile(claim_fd(self.fd, args.fence, defs.DRM_CLOEXEC, mount_levels=1))

    def inc(self, count: int = 1) -> None:
        drm_ioctl(self.fd, defs.IOCTLS_BY_NAME["SW_SYNC_IOC_INC"], defs.sw_sync_inc_arg(value=count))

