"""Buffer objects and dma-bufs: create, query, map as numpy arrays, share."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from emudev.uapi import defs
from userspace.libaccel.fd import FdFile, claim_fd
from userspace.libaccel.ioctl import drm_ioctl
from userspace.libaccel.sync import SyncFile

if TYPE_CHECKING:
    from userspace.libaccel.device import Device

_libc = ctypes.CDLL(None, use_errno=True)

MAPPABLE = defs.DRM_EMUDEV_BO_MAPPABLE
DEVICE_READ_ONLY = defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY
NO_TIMEOUT = 0x7FFFFFFFFFFFFFFF


class DmaBuf(FdFile):
    """A dma-buf file descriptor this process owns."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.size = os.lseek(fd, 0, os.SEEK_END)

    def __enter__(self) -> DmaBuf:
        return self

    def sync(self, flags: int) -> None:
        """DMA_BUF_IOCTL_SYNC: DMA_BUF_SYNC_START/END with READ/WRITE."""
        drm_ioctl(self.fd, defs.IOCTLS_BY_NAME["DMA_BUF_IOCTL_SYNC"], defs.dma_buf_sync(flags=flags))

    def set_name(self, name: str) -> None:
        """DMA_BUF_SET_NAME takes the string's address itself as the ioctl argument, which
        fcntl.ioctl cannot pass (it narrows integers to a C int), so libc's ioctl is called."""
        buf = ctypes.create_string_buffer(name.encode())
        while _libc.ioctl(self.fd, ctypes.c_ulong(defs.DMA_BUF_SET_NAME_B), ctypes.c_void_p(ctypes.addressof(buf))):
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN):
                raise OSError(err, f"DMA_BUF_SET_NAME: {os.strerror(err)}")

    def map(self, writable: bool = True) -> np.ndarray:
        """The dma-buf's bytes as a uint8 array (the mapping lives as long as the array)."""
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return np.frombuffer(mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, prot), dtype=np.uint8)

    def export_sync_file(self, write: bool = False) -> SyncFile:
        """The implicit fences as a sync_file: the writers', or everyone's with `write`."""
        args = defs.dma_buf_export_sync_file(flags=defs.DMA_BUF_SYNC_RW if write else defs.DMA_BUF_SYNC_READ)
        drm_ioctl(self.fd, defs.IOCTLS_BY_NAME["DMA_BUF_IOCTL_EXPORT_SYNC_FILE"], args)
        return SyncFile(claim_fd(self.fd, args.fd, defs.DRM_CLOEXEC))

    def import_sync_file(self, sync_file: SyncFile, write: bool = True) -> None:
        """Add a sync_file's fence to the implicit fences, as a writer or as a reader."""
        args = defs.dma_buf_import_sync_file(flags=defs.DMA_BUF_SYNC_WRITE if write else defs.DMA_BUF_SYNC_READ,
                                             fd=sync_file.fd)
        drm_ioctl(self.fd, defs.IOCTLS_BY_NAME["DMA_BUF_IOCTL_IMPORT_SYNC_FILE"], args)

    @contextmanager
    def cpu_access(self, write: bool = True) -> Iterator[np.ndarray]:
        """Map and bracket the access with DMA_BUF_IOCTL_SYNC START/END."""
        array = self.map(writable=write)
        with self.synced(write):
            yield array

    @contextmanager
    def synced(self, write: bool = True) -> Iterator[None]:
        """DMA_BUF_IOCTL_SYNC START before, END after (also when the body raises)."""
        direction = defs.DMA_BUF_SYNC_RW if write else defs.DMA_BUF_SYNC_READ
        self.sync(defs.DMA_BUF_SYNC_START | direction)
        try:
            yield
        finally:
            self.sync(defs.DMA_BUF_SYNC_END | direction)


class Bo:
    """A GEM buffer object of one open device file."""

    def __init__(self, device: Device, handle: int) -> None:
        self.device = device
        self.handle = handle
        info = self.info()
        self.size = info.size
        self.flags = info.flags
        self.device_va = info.device_va
        self.mmap_offset = info.mmap_offset
        self._dmabuf: DmaBuf | None = None
        self._array: np.ndarray | None = None

    @classmethod
    def create(cls, device: Device, size: int, flags: int = MAPPABLE) -> Bo:
        args = defs.drm_emudev_bo_create(size=size, flags=flags)
        device.ioctl("DRM_IOCTL_EMUDEV_BO_CREATE", args)
        return cls(device, args.handle)

    def info(self) -> defs.drm_emudev_bo_info:
        args = defs.drm_emudev_bo_info(handle=self.handle)
        self.device.ioctl("DRM_IOCTL_EMUDEV_BO_INFO", args)
        return args

    def __enter__(self) -> Bo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """GEM_CLOSE; the BO itself lives on while a dma-buf or another file holds it. On a
        device that is gone (ENODEV) the handle went with it."""
        self._array = None
        if self._dmabuf is not None:
            self._dmabuf.close()
            self._dmabuf = None
        handle, self.handle = self.handle, 0
        if handle:
            try:
                self.device.ioctl("DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=handle))
            except OSError as e:
                if e.errno != errno.ENODEV:
                    raise

    def export(self, flags: int = defs.DRM_CLOEXEC | defs.DRM_RDWR) -> DmaBuf:
        """PRIME_HANDLE_TO_FD: a new dma-buf descriptor for this BO."""
        args = defs.drm_prime_handle(handle=self.handle, flags=flags)
        self.device.ioctl("DRM_IOCTL_PRIME_HANDLE_TO_FD", args)
        return DmaBuf(claim_fd(self.device.fd, args.fd, flags))

    def wait(self, timeout_ns: int = NO_TIMEOUT) -> None:
        """BO_WAIT until every fence of the BO signalled (absolute CLOCK_MONOTONIC deadline)."""
        self.device.ioctl("DRM_IOCTL_EMUDEV_BO_WAIT", defs.drm_emudev_bo_wait(handle=self.handle,
                                                                               timeout_ns=timeout_ns))

    def prep(self, write: bool = True, timeout_ns: int = NO_TIMEOUT) -> None:
        flags = defs.DRM_EMUDEV_PREP_READ | (defs.DRM_EMUDEV_PREP_WRITE if write else 0)
        self.device.ioctl("DRM_IOCTL_EMUDEV_BO_PREP", defs.drm_emudev_bo_prep(handle=self.handle, flags=flags,
                                                                               timeout_ns=timeout_ns))

    def fini(self) -> None:
        self.device.ioctl("DRM_IOCTL_EMUDEV_BO_FINI", defs.drm_emudev_bo_fini(handle=self.handle))

    def map(self) -> np.ndarray:
        """The default CPU path: the BO's own pages through a dma-buf kept open by this Bo,
        mapped once and reused."""
        if self._array is None:
            if self._dmabuf is None:
                self._dmabuf = self.export()
            self._array = self._dmabuf.map()
        return self._array

    def map_device(self) -> np.ndarray:
        """The BO through mmap() of the device fd at its fake offset (the kernel-driver way)."""
        mm = mmap.mmap(self.device.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=self.mmap_offset)
        return np.frombuffer(mm, dtype=np.uint8)

    @contextmanager
    def cpu_access(self, write: bool = True) -> Iterator[np.ndarray]:
        """Map (the default path, a dma-buf) and bracket the access with that dma-buf's
        DMA_BUF_IOCTL_SYNC: it waits for the device as BO_PREP would, and after it the
        device sees the writes, passthrough or not. (BO_PREP/BO_FINI are the brackets of
        map_device().)"""
        array = self.map()
        assert self._dmabuf is not None
        with self._dmabuf.synced(write):
            yield array
