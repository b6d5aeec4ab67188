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
import threading

_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


# Without argtypes: every argument is passed as a ready ctypes value (the counts and flags as the
# constants below), which spares the per-call conversion, a third of a small transfer's cost.
_readv, _writev = _libc.process_vm_readv, _libc.process_vm_writev
_readv.restype = _writev.restype = ctypes.c_ssize_t
_ONE, _NO_FLAGS = ctypes.c_ulong(1), ctypes.c_ulong(0)
# Transfers up to this size go through a buffer of the calling thread, as most do (handle and
# syncobj arrays of a few entries): building ctypes objects per call cost more than the system call.
SCRATCH_SIZE = 4096


class _Staging:
    """A buffer in this process and the one-segment iovecs over it and over the caller's range."""

    def __init__(self, size: int) -> None:
        self.buffer = ctypes.create_string_buffer(size)
        self.address = ctypes.addressof(self.buffer)
        self.local = _IoVec(self.address, 0)
        self.remote = _IoVec(0, 0)
        self.local_ref = ctypes.byref(self.local)
        self.remote_ref = ctypes.byref(self.remote)


class _Scratch(threading.local):
    """A thread's staging for small transfers, made once per thread."""

    def __init__(self) -> None:
        self.staging = _Staging(SCRATCH_SIZE)


_scratch = _Scratch()


def _staging(size: int) -> _Staging:
    """The thread's scratch for a small transfer, a buffer of its own for a larger one."""
    return _scratch.staging if size <= SCRATCH_SIZE else _Staging(size)

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
        staging = _staging(size)
        self._transfer(_readv, staging, address, size)
        return ctypes.string_at(staging.address, size)

    def write(self, address: int, data: bytes) -> None:
        """Copy `data` into the caller; EFAULT on a bad or short range."""
        size = len(data)
        if not size:
            return
        self._check_range(address, size)
        staging = _staging(size)
        ctypes.memmove(staging.address, bytes(data), size)
        self._transfer(_writev, staging, address, size)

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

    def _transfer(self, fn: ctypes._CFuncPtr, staging: _Staging, remote: int, size: int) -> None:
        staging.local.iov_len = staging.remote.iov_len = size
        staging.remote.iov_base = remote
        done = fn(self.pid, staging.local_ref, _ONE, staging.remote_ref, _ONE, _NO_FLAGS)
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
