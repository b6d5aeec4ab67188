"""One kernel request from receipt to its single reply.

A reply may come from any thread at any later time (a handler that returned
``DEFERRED``); the "exactly once" rule is kept by the session's pending table,
not by the worker that read the request.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from emudev.fuse import abi
from emudev.fuse.ops import IoctlResult

if TYPE_CHECKING:
    from emudev.fuse.session import Session

InterruptCallback = Callable[["Request"], object]
Buffer = bytes | bytearray | memoryview

_OUT_HEADER = abi.OUT_HEADER


def write_message(fd: int, iov: list[Buffer]) -> None:
    """Send one message to the kernel in one writev, which is what makes it atomic.

    ENOENT means the kernel no longer waits for this unique (the caller was
    interrupted or the request aborted) and ENODEV that the connection is gone:
    in both cases there is nobody left to tell, so they are not errors.
    """
    try:
        os.writev(fd, iov)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENODEV):
            raise


class Request:
    """A request as the kernel sent it: who asked (``uid``, ``gid``, ``pid``) and about what."""

    __slots__ = ("_interrupted", "_on_interrupt", "_replied", "file_flags", "gid", "limit", "nodeid", "opcode",
                 "page_cache", "pid", "session", "uid", "unique")

    def __init__(self, session: Session, header: tuple[int, ...]) -> None:
        """``header`` is the unpacked fuse_in_header."""
        _, self.opcode, self.unique, self.nodeid, self.uid, self.gid, self.pid, _, _ = header
        self.session = session
        self._replied = False
        self._interrupted = False
        self._on_interrupt: InterruptCallback | None = None
        # Bytes of reply data the kernel accepts (READ/READDIR size, ioctl out_size).
        self.limit = 0
        # READ/WRITE: the kernel's page cache asks (a fault, readahead, write-back), not a
        # read(2)/write(2) of the caller; and the open file's flags (O_NONBLOCK, ...).
        self.page_cache = False
        self.file_flags = 0

    def __repr__(self) -> str:
        name = abi.opcode_name(self.opcode)
        return f"<Request {name} unique={self.unique} nodeid={self.nodeid} pid={self.pid}>"

    @property
    def replied(self) -> bool:
        return self._replied

    @property
    def interrupted(self) -> bool:
        """True once the kernel asked to interrupt this request (the caller got a signal)."""
        return self._interrupted

    def on_interrupt(self, callback: InterruptCallback) -> None:
        """Run ``callback(self)`` when the caller is interrupted; the callback decides the reply
        (usually ``reply_error(errno.EINTR)``).

        It runs on the worker that read the INTERRUPT, or right here if the
        interrupt already arrived (another worker can read it before the handler
        that deferred this request got to register).
        """
        if self.session.pending.set_interrupt_callback(self, callback):
            callback(self)

    def reply(self, value: object) -> None:
        """Reply with what the operation would have returned (an ``Entry``, ``bytes``, ...)."""
        from emudev.fuse.dispatch import encode_reply  # dispatch builds on this module

        self.send(0, encode_reply(self, value))

    def reply_error(self, err: int) -> None:
        if not 0 < err < 1000:
            raise ValueError(f"errno must be in 1..999, got {err}")
        self.send(err, ())

    def reply_ioctl(self, result: int, data: bytes = b"") -> None:
        """The caller's ioctl(2) returns ``result`` after ``data`` was copied to its buffer,
        even when ``result`` is negative (that is how "copy back even on error" is done)."""
        self.reply(IoctlResult(result, data))

    def reply_poll(self, revents: int) -> None:
        self.reply(revents)

    def reply_bytes(self, *payload: Buffer) -> None:
        """Raw success reply: the payload buffers follow the header as they are."""
        self.send(0, payload)

    def send(self, err: int, payload: tuple[Buffer, ...]) -> None:
        """What every reply comes down to: claim the right to answer (once), then write the
        header (``err`` is a positive errno, or 0) and ``payload`` in one message. The session
        calls it with its encoders' tuples directly, which spares a ``*payload`` call per request."""
        session = self.session
        if not session.pending.retire(self):
            return
        size = _OUT_HEADER.size
        for part in payload:
            size += len(part)
        write_message(session.fd, [_OUT_HEADER.pack(size, -err, self.unique), *payload])
