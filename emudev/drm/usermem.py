"""Access to the calling process's memory, the emulator's copy_{from,to}_user.

FUSE copies only the top-level ioctl struct; embedded user pointers (strings of
DRM_IOCTL_VERSION, handle arrays, ...) are followed with process_vm_readv/writev on
the caller, which fails exactly where the kernel's copy_*_user would: EFAULT.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


for _name in ("process_vm_readv", "process_vm_writev"):
    _fn = getattr(_libc, _name)
    _fn.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                    ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
    _fn.restype = ctypes.c_ssize_t

# Largest single transfer: bounds what one ioctl can make the daemon allocate.
MAX_TRANSFER = 64 << 20
PAGE_SIZE = mmap.PAGESIZE


class UserMemory:
    """The address space of the task that issued a request (its pid from the FUSE header)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, address: int, size: int) -> bytes:
        """Copy `size` bytes from the caller; EFAULT on a bad or short range."""
        if size == 0:
            return b""
        self._check_range(address, size)
        buf = ctypes.create_string_buffer(size)
        self._transfer(_libc.process_vm_readv, ctypes.addressof(buf), address, size)
        return buf.raw

    def write(self, address: int, data: bytes) -> None:
        """Copy `data` into the caller; EFAULT on a bad or short range."""
        if not data:
            return
        self._check_range(address, len(data))
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        self._transfer(_libc.process_vm_writev, ctypes.addressof(buf), address, len(data))

    def read_string(self, address: int, limit: int) -> bytes:
        """strndup_user(): the NUL-terminated string at `address`, EINVAL if longer than
        `limit` bytes with its NUL, EFAULT if unreadable. Reads page by page, as a string
        may end just before an unmapped page."""
        data = b""
        while len(data) <= limit:
            chunk = min(limit + 1 - len(data), PAGE_SIZE - (address + len(data)) % PAGE_SIZE)
            data += self.read(address + len(data), chunk)
            end = data.find(b"\0")
            if end >= 0:
                return data[:end]
        raise OSError(errno.EINVAL, "string too long")

    @staticmethod
    def _check_range(address: int, size: int) -> None:
        if address == 0 or size < 0 or size > MAX_TRANSFER or address + size > 1 << 64:
            raise OSError(errno.EFAULT, "bad user address")

    def _transfer(self, fn: ctypes._CFuncPtr, local: int, remote: int, size: int) -> None:
        local_iov = _IoVec(local, size)
        remote_iov = _IoVec(remote, size)
        done = fn(self.pid, ctypes.byref(local_iov), 1, ctypes.byref(remote_iov), 1, 0)
        if done == size:
            return
        err = ctypes.get_errno()
        if done < 0 and err in (errno.ESRCH, errno.EPERM):
            raise OSError(err, os.strerror(err))
        raise OSError(errno.EFAULT, "bad user address")


@functools.lru_cache(maxsize=256)
def user_memory(pid: int) -> UserMemory:
    """The UserMemory of `pid`, shared by its requests: it holds nothing but the pid, and
    looking one up costs half of building one for every ioctl."""
    return UserMemory(pid)
