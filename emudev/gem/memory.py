"""Device memory: the accounting of a device's capacity and the pages behind each BO.

Each BO's pages are a memfd of its own, so that a dma-buf can hand exactly that
BO to the kernel as a passthrough backing file (zero-copy CPU mapping) and nothing
else. The memfd is created on first use and mapped in the daemon once: creating
and closing BOs costs no file descriptor and no mapping until their memory is
touched, which keeps tens of thousands of idle BOs within the process limits.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

PAGE_SIZE = mmap.PAGESIZE


def page_align(size: int) -> int:
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class DeviceMemory:
    """How much of a device's memory is taken; reservations beyond it fail with ENOMEM."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> None:
        with self._lock:
            if self.used + size > self.capacity:
                raise OSError(errno.ENOMEM, "out of device memory")
            self.used += size

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size


class BoMemory:
    """The zero-filled pages of one BO."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()

    @property
    def allocated(self) -> bool:
        return self._fd is not None

    def fd(self) -> int:
        """The memfd holding the pages (created here on first use)."""
        with self._lock:
            if self._fd is None:
                fd = os.memfd_create(self.name, os.MFD_CLOEXEC)
                try:
                    os.ftruncate(fd, self.size)
                except OSError:
                    os.close(fd)
                    raise
                self._fd = fd
            return self._fd

    def view(self) -> memoryview:
        """The daemon's mapping of the pages, made once."""
        fd = self.fd()
        with self._lock:
            if self._map is None:
                self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            return memoryview(self._map)

    def free(self) -> None:
        """Give the pages back; a CPU mapping a client still has keeps its own reference to them."""
        with self._lock:
            if self._map is not None:
                try:
                    self._map.close()
                except BufferError:
                    pass  # a view is still in use: the mapping goes when the last view does
                self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
