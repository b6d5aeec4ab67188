"""File descriptors of the calling process, the emulator's fget().

A FUSE request carries no fd, only the caller's pid; incoming fds (a dma-buf to
import, an eventfd, a sync_file) are duplicated out of the caller's own fd table
with pidfd_getfd(2), exactly the file the caller named, or EBADF as fget() gives.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438
PIDFD_THREAD = os.O_EXCL  # pidfd_open(2): the pid may be a thread (Linux 6.9+)


def _pidfd_open(pid: int) -> int:
    try:
        return os.pidfd_open(pid, PIDFD_THREAD)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.pidfd_open(_thread_group(pid))


def _thread_group(tid: int) -> int:
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


@contextmanager
def caller_fd(pid: int, fd: int) -> Iterator[int]:
    """A duplicate of fd `fd` of task `pid`, closed on exit; EBADF if there is none."""
    if fd < 0:
        raise OSError(errno.EBADF, "bad file descriptor")
    try:
        pidfd = _pidfd_open(pid)
    except OSError as e:
        raise OSError(errno.EBADF, f"caller {pid} is gone") from e
    try:
        dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            code = ctypes.get_errno()
            raise OSError(errno.EBADF if code == errno.EBADF else code, os.strerror(code))
    finally:
        os.close(pidfd)
    try:
        yield dup
    finally:
        os.close(dup)


def is_eventfd(fd: int) -> bool:
    """eventfd_ctx_fdget()'s test, from what /proc/self/fdinfo shows of an eventfd."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return any(line.startswith("eventfd-count:") for line in f)
    except OSError:
        return False
