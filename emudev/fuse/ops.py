"""What a file system implements to be served: the operations and the values they return.

The session decodes each request into plain arguments, calls the method of the
same name, and encodes what it returns; the file system never sees the wire.
Every method may raise ``OSError(errno)`` to fail the request with that errno, and
may return :data:`DEFERRED` instead of a value to reply later, from any thread,
with ``req.reply(value)`` (or ``reply_error``/``reply_ioctl``/``reply_poll``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from emudev.fuse.request import Request


class Deferred:
    """Type of :data:`DEFERRED`, so signatures can say ``-> IoctlResult | Deferred``."""

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Final = Deferred()
"""Returned by a handler that will reply later; the request stays pending until it does."""


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """What INIT settled between the kernel and this daemon.

    ``proto_minor`` is the minor both sides speak, ``kernel_minor`` the kernel's own.
    ``kernel_flags`` is what the kernel offered, ``flags`` what was agreed; both hold
    the 64-bit INIT flags (flags2 shifted into the high word), as the kernel does.
    ``direct_io_mmap`` (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6+): a direct-I/O file may
    still be mapped shared, through the page cache.
    """

    proto_major: int
    proto_minor: int
    kernel_minor: int
    kernel_flags: int
    flags: int
    max_write: int
    max_readahead: int
    max_pages: int
    passthrough: bool
    direct_io_mmap: bool = False


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    size: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    blksize: int = 4096
    rdev: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """A name resolved to a node; the kernel caches the name and attributes for the timeouts (seconds)."""

    nodeid: int
    attr: Attr
    generation: int = 0
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class Opened:
    """An open file or directory handle and how the kernel should treat its I/O.

    ``direct_io`` sends every read and write to the daemon (no page cache, no shared
    mmap); ``passthrough_backing_id`` (from ``Session.backing_open``) sends them to a
    backing file instead, without the daemon. ``shared_mmap`` says the file must allow
    MAP_SHARED: a direct-I/O file then keeps direct I/O for read(2) and write(2) where
    the kernel lets it be mapped (``ConnInfo.direct_io_mmap``), and is a cached file
    otherwise; the operations tell the two apart by ``Request.page_cache``.
    """

    fh: int
    direct_io: bool = False
    shared_mmap: bool = False
    keep_cache: bool = False
    nonseekable: bool = False
    passthrough_backing_id: int | None = None


class IoctlReply(Protocol):
    """What an ioctl operation returns to be answered at once: any object with these two
    attributes will do, so a file system can hand over its own outcome without wrapping
    it into an :class:`IoctlResult` on every call."""

    @property
    def result(self) -> int: ...

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class IoctlResult:
    """``result`` is what ioctl(2) returns; ``data`` is copied to the caller's buffer even when
    ``result`` is negative, so a handler can implement "copy back even on error"."""

    result: int = 0
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry; ``offset`` is the cookie the kernel hands back to continue after it."""

    name: bytes
    ino: int
    type: int
    offset: int


@dataclass(frozen=True, slots=True)
class StatFs:
    blocks: int = 0
    bfree: int = 0
    bavail: int = 0
    files: int = 0
    ffree: int = 0
    bsize: int = 4096
    namelen: int = 255
    frsize: int = 4096


def _enosys() -> OSError:
    return OSError(errno.ENOSYS, "operation not implemented by this file system")


class Operations:
    """Base class of a served file system: every request fails with ENOSYS until overridden.

    ENOSYS is also what the kernel understands as "never ask again" for FLUSH,
    FSYNC, ACCESS, POLL, INTERRUPT and the xattr calls, so leaving a method out is
    a cheap, legitimate choice. ``req`` carries the caller's uid/gid/pid.
    """

    def init(self, conn: ConnInfo) -> None:
        """Called once the connection is negotiated, before the INIT reply."""

    def destroy(self) -> None:
        """Called once when the connection ends (DESTROY or the device closing)."""

    def lookup(self, req: Request, parent: int, name: bytes) -> Entry | Deferred:
        raise _enosys()

    def forget(self, nodeid: int, nlookup: int) -> None:
        """The kernel dropped ``nlookup`` references to ``nodeid``; no reply is possible."""

    def getattr(self, req: Request, nodeid: int, fh: int | None) -> Attr | Deferred:
        raise _enosys()

    def readlink(self, req: Request, nodeid: int) -> bytes | Deferred:
        raise _enosys()

    def open(self, req: Request, nodeid: int, flags: int) -> Opened | Deferred:
        raise _enosys()

    def release(self, req: Request, nodeid: int, fh: int, flags: int) -> Deferred | None:
        raise _enosys()

    def read(self, req: Request, nodeid: int, fh: int, offset: int, size: int) -> bytes | Deferred:
        raise _enosys()

    def write(self, req: Request, nodeid: int, fh: int, offset: int, data: memoryview) -> int | Deferred:
        """``data`` views the session's receive buffer: copy it to keep it past the return."""
        raise _enosys()

    def flush(self, req: Request, nodeid: int, fh: int, lock_owner: int) -> Deferred | None:
        raise _enosys()

    def fsync(self, req: Request, nodeid: int, fh: int, datasync: bool) -> Deferred | None:
        raise _enosys()

    def ioctl(self, req: Request, nodeid: int, fh: int, cmd: int, arg: int, in_data: memoryview,
              out_size: int, flags: int) -> IoctlReply | Deferred:
        """``in_data`` is the caller's ``_IOW`` struct (a private copy, safe to keep when deferring);
        at most ``out_size`` bytes of the reply data reach the caller."""
        raise _enosys()

    def poll(self, req: Request, nodeid: int, fh: int, kh: int | None, flags: int,
             events: int) -> int | Deferred:
        """Return the ready events now; when ``kh`` is given, call ``Session.notify_poll(kh)``
        once readiness may have changed, and the kernel polls again."""
        raise _enosys()

    def opendir(self, req: Request, nodeid: int, flags: int) -> Opened | Deferred:
        raise _enosys()

    def readdir(self, req: Request, nodeid: int, fh: int, offset: int) -> Iterable[DirEntry] | Deferred:
        """Entries after the cookie ``offset`` (0 = from the start); the session takes as many as fit."""
        raise _enosys()

    def releasedir(self, req: Request, nodeid: int, fh: int) -> Deferred | None:
        raise _enosys()

    def statfs(self, req: Request, nodeid: int) -> StatFs | Deferred:
        raise _enosys()

    def access(self, req: Request, nodeid: int, mask: int) -> Deferred | None:
        raise _enosys()
