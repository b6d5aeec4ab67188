"""File descriptors of the calling process, the emulator's fget().

A FUSE request carries no fd, only the caller's pid. What a descriptor is (its
mount and inode, or that it is an eventfd) is read from /proc/<caller>/fdinfo,
without taking a reference: a copy of a file on the daemon's own mount would have to
be closed, and that close is a FLUSH request only the daemon's own workers can
answer. The one file the daemon must keep, an eventfd to signal later, is
duplicated with pidfd_getfd(2). A missing descriptor is EBADF, as fget() gives.
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


def caller_fd_info(pid: int, fd: int) -> dict[str, str]:
    """The fdinfo fields (pos, flags, mnt_id, ino, eventfd-count, ...) of the caller's `fd`."""
    if fd < 0:
        raise OSError(errno.EBADF, "bad file descriptor")
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            return {key: value.strip() for key, _, value in (line.partition(":") for line in f) if value}
    except FileNotFoundError:
        raise OSError(errno.EBADF, "bad file descriptor") from None


@contextmanager
def caller_fd(pid: int, fd: int) -> Iterator[int]:
    """A duplicate of fd `fd` of task `pid`, closed on exit; EBADF if there is none.
    Never use it for a file that may be on the daemon's own mount (see above)."""
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
