"""Opcode table: how each request is decoded into an operation call and its result encoded.

One entry per opcode keeps the wire format of a request and of its reply side
by side, and lets ``Request.reply(value)`` encode a deferred result exactly as
the immediate path would.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from emudev.fuse import abi
from emudev.fuse.abi import Opcode
from emudev.fuse.ops import Attr, DirEntry, Entry, IoctlReply, Opened, StatFs
from emudev.fuse.request import Buffer, Request

if TYPE_CHECKING:
    from emudev.fuse.session import Session

# The kernel caches GETATTR replies this long; Attr carries no timeout of its own.
ATTR_TIMEOUT = 1.0


Operation = Callable[..., Any]
Encoder = Callable[[Request, Any], tuple[Buffer, ...]]
Call = Callable[[Request, memoryview], Any]


@dataclass(frozen=True, slots=True)
class Handler:
    """``decode`` decodes the request body and calls the file system's operation ``op``, which it
    gets bound as its first argument (the session itself when ``op`` is None); ``encode`` turns
    the result into reply payload buffers, or is None for the requests the kernel expects no reply to."""

    decode: Callable[..., Any]
    encode: Encoder | None
    op: str | None = None

    def bind(self, session: Session) -> Call:
        """The decoder with its operation looked up once, for the session to keep: a getattr
        and a bound method per request are a measurable share of an ioctl's cost."""
        if self.op is None:
            return partial(self.decode, session)
        method = getattr(session.ops, self.op, None)
        if method is None:
            return partial(_missing, self.op)
        return partial(self.decode, method)


def _missing(name: str, req: Request, body: memoryview) -> None:
    raise OSError(errno.ENOSYS, f"file system has no {name}()")


def _cstring(body: memoryview) -> bytes:
    return bytes(body).split(b"\0", 1)[0]


def _seconds(timeout: float) -> tuple[int, int]:
    whole = int(timeout)
    return whole, int((timeout - whole) * 1e9)


def _attr_fields(a: Attr) -> tuple[int, ...]:
    atime, atime_ns = divmod(a.atime_ns, 10**9)
    mtime, mtime_ns = divmod(a.mtime_ns, 10**9)
    ctime, ctime_ns = divmod(a.ctime_ns, 10**9)
    blocks = (a.size + 511) // 512
    return (a.ino, a.size, blocks, atime, mtime, ctime, atime_ns, mtime_ns, ctime_ns, a.mode, a.nlink,
            a.uid, a.gid, a.rdev, a.blksize, 0)


# Encoders: operation result -> reply payload.

def _no_data(req: Request, value: None) -> tuple[Buffer, ...]:
    return ()


def _entry_out(req: Request, e: Entry) -> tuple[Buffer, ...]:
    entry_s, entry_ns = _seconds(e.entry_timeout)
    attr_s, attr_ns = _seconds(e.attr_timeout)
    return (abi.ENTRY_OUT.pack(e.nodeid, e.generation, entry_s, attr_s, entry_ns, attr_ns,
                               *_attr_fields(e.attr)),)


def _attr_out(req: Request, attr: Attr) -> tuple[Buffer, ...]:
    valid_s, valid_ns = _seconds(ATTR_TIMEOUT)
    return (abi.ATTR_OUT.pack(valid_s, valid_ns, 0, *_attr_fields(attr)),)


def _data(req: Request, data: bytes) -> tuple[Buffer, ...]:
    return (memoryview(data)[: req.limit],)


def _link(req: Request, target: bytes) -> tuple[Buffer, ...]:
    return (target,)


def _open_out(req: Request, o: Opened) -> tuple[Buffer, ...]:
    conn = req.session.conn
    direct_io = o.direct_io and (not o.shared_mmap or (conn is not None and conn.direct_io_mmap))
    flags = ((abi.FOPEN_DIRECT_IO if direct_io else 0) | (abi.FOPEN_KEEP_CACHE if o.keep_cache else 0)
             | (abi.FOPEN_NONSEEKABLE if o.nonseekable else 0))
    backing_id = 0
    if o.passthrough_backing_id is not None:
        flags |= abi.FOPEN_PASSTHROUGH
        backing_id = o.passthrough_backing_id
    return (abi.OPEN_OUT.pack(o.fh, flags, backing_id),)


def _write_out(req: Request, written: int) -> tuple[Buffer, ...]:
    return (abi.WRITE_OUT.pack(written, 0),)


def _statfs_out(req: Request, s: StatFs) -> tuple[Buffer, ...]:
    return (abi.STATFS_OUT.pack(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen,
                                s.frsize),)


def _ioctl_out(req: Request, r: IoctlReply) -> tuple[Buffer, ...]:
    data = r.data
    if len(data) > req.limit:
        data = memoryview(data)[: req.limit]
    return (abi.IOCTL_OUT.pack(r.result, 0, 0, 0), data)


def _poll_out(req: Request, revents: int) -> tuple[Buffer, ...]:
    return (abi.POLL_OUT.pack(revents, 0),)


def _dirents(req: Request, entries: Iterable[DirEntry]) -> tuple[Buffer, ...]:
    """Pack whole fuse_dirent records until the next one would not fit the kernel's buffer."""
    out = bytearray()
    for e in entries:
        record = abi.DIRENT.size + len(e.name)
        padded = (record + 7) & ~7
        if len(out) + padded > req.limit:
            break
        out += abi.DIRENT.pack(e.ino, e.offset, len(e.name), e.type)
        out += e.name
        out += bytes(padded - record)
    return (out,)


def _init_out(req: Request, init_out: bytes) -> tuple[Buffer, ...]:
    return (init_out,)


# Decoders: request body -> operation call.

def _lookup(lookup: Operation, req: Request, body: memoryview) -> Any:
    return lookup(req, req.nodeid, _cstring(body))


def _forget(forget: Operation, req: Request, body: memoryview) -> None:
    (nlookup,) = abi.FORGET_IN.unpack_from(body)
    forget(req.nodeid, nlookup)


def _batch_forget(forget: Operation, req: Request, body: memoryview) -> None:
    count, _ = abi.BATCH_FORGET_IN.unpack_from(body)
    items = body[abi.BATCH_FORGET_IN.size:]
    for nodeid, nlookup in itertools.islice(abi.FORGET_ONE.iter_unpack(items), count):
        forget(nodeid, nlookup)


def _getattr(get_attr: Operation, req: Request, body: memoryview) -> Any:
    flags, _, fh = abi.GETATTR_IN.unpack_from(body)
    return get_attr(req, req.nodeid, fh if flags & abi.GETATTR_FH else None)


def _readlink(readlink: Operation, req: Request, body: memoryview) -> Any:
    return readlink(req, req.nodeid)


def _open(open_file: Operation, req: Request, body: memoryview) -> Any:
    flags, _ = abi.OPEN_IN.unpack_from(body)
    return open_file(req, req.nodeid, flags)


def _opendir(opendir: Operation, req: Request, body: memoryview) -> Any:
    flags, _ = abi.OPEN_IN.unpack_from(body)
    return opendir(req, req.nodeid, flags)


def _release(release: Operation, req: Request, body: memoryview) -> Any:
    fh, flags, _, _ = abi.RELEASE_IN.unpack_from(body)
    return release(req, req.nodeid, fh, flags)


def _releasedir(releasedir: Operation, req: Request, body: memoryview) -> Any:
    fh, _, _, _ = abi.RELEASE_IN.unpack_from(body)
    return releasedir(req, req.nodeid, fh)


def _read(read: Operation, req: Request, body: memoryview) -> Any:
    fh, offset, size, read_flags, _, file_flags, _ = abi.READ_IN.unpack_from(body)
    req.limit = size
    req.page_cache = not read_flags & abi.READ_LOCKOWNER
    req.file_flags = file_flags
    return read(req, req.nodeid, fh, offset, size)


def _readdir(readdir: Operation, req: Request, body: memoryview) -> Any:
    fh, offset, size, _, _, _, _ = abi.READ_IN.unpack_from(body)
    req.limit = size
    return readdir(req, req.nodeid, fh, offset)


def _write(write: Operation, req: Request, body: memoryview) -> Any:
    fh, offset, size, write_flags, _, file_flags, _ = abi.WRITE_IN.unpack_from(body)
    data = body[abi.WRITE_IN.size: abi.WRITE_IN.size + size]
    req.page_cache = bool(write_flags & abi.WRITE_CACHE)
    req.file_flags = file_flags
    return write(req, req.nodeid, fh, offset, data)


def _flush(flush: Operation, req: Request, body: memoryview) -> Any:
    fh, _, _, lock_owner = abi.FLUSH_IN.unpack_from(body)
    return flush(req, req.nodeid, fh, lock_owner)


def _fsync(fsync: Operation, req: Request, body: memoryview) -> Any:
    fh, flags, _ = abi.FSYNC_IN.unpack_from(body)
    return fsync(req, req.nodeid, fh, bool(flags & abi.FSYNC_FDATASYNC))


def _ioctl(ioctl: Operation, req: Request, body: memoryview) -> Any:
    fh, flags, cmd, arg, in_size, out_size = abi.IOCTL_IN.unpack_from(body)
    # A copy, unlike WRITE data: ioctls are what handlers defer, and the receive
    # buffer is reused as soon as the handler returns.
    in_data = memoryview(body[abi.IOCTL_IN.size: abi.IOCTL_IN.size + in_size].tobytes())
    req.limit = out_size
    return ioctl(req, req.nodeid, fh, cmd, arg, in_data, out_size, flags)


def _poll(poll: Operation, req: Request, body: memoryview) -> Any:
    fh, kh, flags, events = abi.POLL_IN.unpack_from(body)
    notify_kh = kh if flags & abi.POLL_SCHEDULE_NOTIFY else None
    return poll(req, req.nodeid, fh, notify_kh, flags, events)


def _statfs(statfs: Operation, req: Request, body: memoryview) -> Any:
    return statfs(req, req.nodeid)


def _access(access: Operation, req: Request, body: memoryview) -> Any:
    mask, _ = abi.ACCESS_IN.unpack_from(body)
    return access(req, req.nodeid, mask)


def _init(s: Session, req: Request, body: memoryview) -> bytes:
    return s.negotiate(body)


def _destroy(s: Session, req: Request, body: memoryview) -> None:
    s.destroy_once()


def _interrupt(s: Session, req: Request, body: memoryview) -> None:
    (unique,) = abi.INTERRUPT_IN.unpack_from(body)
    s.pending.interrupt(req, unique)


HANDLERS: dict[int, Handler] = {
    Opcode.INIT: Handler(_init, _init_out),
    Opcode.DESTROY: Handler(_destroy, _no_data),
    Opcode.INTERRUPT: Handler(_interrupt, None),
    Opcode.FORGET: Handler(_forget, None, "forget"),
    Opcode.BATCH_FORGET: Handler(_batch_forget, None, "forget"),
    Opcode.LOOKUP: Handler(_lookup, _entry_out, "lookup"),
    Opcode.GETATTR: Handler(_getattr, _attr_out, "getattr"),
    Opcode.READLINK: Handler(_readlink, _link, "readlink"),
    Opcode.OPEN: Handler(_open, _open_out, "open"),
    Opcode.RELEASE: Handler(_release, _no_data, "release"),
    Opcode.READ: Handler(_read, _data, "read"),
    Opcode.WRITE: Handler(_write, _write_out, "write"),
    Opcode.FLUSH: Handler(_flush, _no_data, "flush"),
    Opcode.FSYNC: Handler(_fsync, _no_data, "fsync"),
    Opcode.IOCTL: Handler(_ioctl, _ioctl_out, "ioctl"),
    Opcode.POLL: Handler(_poll, _poll_out, "poll"),
    Opcode.OPENDIR: Handler(_opendir, _open_out, "opendir"),
    Opcode.READDIR: Handler(_readdir, _dirents, "readdir"),
    Opcode.RELEASEDIR: Handler(_releasedir, _no_data, "releasedir"),
    Opcode.STATFS: Handler(_statfs, _statfs_out, "statfs"),
    Opcode.ACCESS: Handler(_access, _no_data, "access"),
}

NO_REPLY = frozenset(op for op, handler in HANDLERS.items() if handler.encode is None)


def encode_reply(req: Request, value: Any) -> tuple[Buffer, ...]:
    handler = HANDLERS.get(req.opcode)
    if handler is None or handler.encode is None:
        raise TypeError(f"{req!r} takes no reply value")
    return handler.encode(req, value)
