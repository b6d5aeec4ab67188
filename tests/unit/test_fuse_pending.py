"""Reply bookkeeping and interrupt routing, driven without a kernel: replies land in a pipe.

The races these cover (an INTERRUPT read before its request is registered, or
after it was answered) cannot be provoked on demand through a real mount.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from emudev.fuse import DirEntry, Operations, Request, Session, abi
from emudev.fuse.dispatch import HANDLERS, NO_REPLY, encode_reply
from emudev.fuse.pending import INTERRUPT_PATIENCE


class Wire:
    """A session whose "device" is a pipe, and the messages written to it."""

    def __init__(self) -> None:
        self.read_end, write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.session = Session(write_end, Operations())

    def request(self, unique: int, opcode: int = abi.Opcode.IOCTL) -> Request:
        req = Request(self.session, (abi.IN_HEADER.size, opcode, unique, 1, 0, 0, 42, 0, 0))
        if opcode not in NO_REPLY:
            self.session.pending.add(req)
        return req

    def interrupt(self, unique: int) -> Request:
        intr = self.request(unique | 1, abi.Opcode.INTERRUPT)
        self.session.pending.interrupt(intr, unique)
        return intr

    def replies(self) -> list[tuple[int, int]]:
        """(unique, errno) of every message written so far."""
        try:
            data = os.read(self.read_end, 65536)
        except BlockingIOError:
            return []
        out = []
        while data:
            size, error, unique = abi.OUT_HEADER.unpack_from(data)
            out.append((unique, -error))
            data = data[size:]
        return out


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.session.close()
    os.close(w.read_end)


def test_a_request_is_replied_exactly_once(wire: Wire) -> None:
    req = wire.request(2)
    req.reply_ioctl(0, b"")
    with pytest.raises(RuntimeError):
        req.reply_error(errno.EIO)
    assert wire.replies() == [(2, 0)]
    assert len(wire.session.pending) == 0


def test_interrupt_of_a_pending_request_runs_its_callback(wire: Wire) -> None:
    req = wire.request(2)
    req.on_interrupt(lambda r: r.reply_error(errno.EINTR))
    wire.interrupt(2)
    assert req.interrupted
    assert wire.replies() == [(2, errno.EINTR)]


def test_interrupt_before_the_callback_runs_it_at_registration(wire: Wire) -> None:
    req = wire.request(2)
    wire.interrupt(2)
    assert wire.replies() == []
    req.on_interrupt(lambda r: r.reply_error(errno.EINTR))
    assert wire.replies() == [(2, errno.EINTR)]


def test_interrupt_read_before_its_request_is_kept_for_it(wire: Wire) -> None:
    wire.interrupt(4)
    req = wire.request(4)
    assert req.interrupted
    for unique in range(6, 6 + 2 * INTERRUPT_PATIENCE, 2):
        wire.request(unique)
    assert wire.replies() == []  # matched: no EAGAIN


def test_interrupt_of_an_unknown_request_gets_eagain_after_a_while(wire: Wire) -> None:
    intr = wire.interrupt(4)
    for unique in range(6, 6 + 2 * INTERRUPT_PATIENCE, 2):
        wire.request(unique)
    assert wire.replies() == []
    wire.request(100)
    assert wire.replies() == [(intr.unique, errno.EAGAIN)]


def test_interrupt_of_an_answered_request_is_dropped(wire: Wire) -> None:
    req = wire.request(2)
    req.reply_ioctl(0)
    wire.replies()
    wire.interrupt(2)
    for unique in range(4, 8 + 2 * INTERRUPT_PATIENCE, 2):
        wire.request(unique)
    assert wire.replies() == []


def test_replies_after_close_are_dropped(wire: Wire) -> None:
    req = wire.request(2)
    wire.session.close()
    req.reply_ioctl(0)  # the descriptor number may name another file by now: write nothing
    assert wire.replies() == []


def test_readdir_reply_holds_only_whole_entries_that_fit(wire: Wire) -> None:
    req = wire.request(2, abi.Opcode.READDIR)
    req.limit = 2 * 32  # a fuse_dirent with a name of up to 8 bytes takes 32
    entries = [DirEntry(name, 5, 8, n) for n, name in enumerate([b"a", b"bbbbbbbb", b"c"], start=1)]
    (payload,) = encode_reply(req, entries)
    assert len(payload) == 64
    first = abi.DIRENT.unpack_from(payload)
    second = abi.DIRENT.unpack_from(payload, 32)
    assert first == (5, 1, 1, 8) and second == (5, 2, 8, 8)
    assert bytes(payload[24:25]) == b"a" and bytes(payload[56:64]) == b"bbbbbbbb"


class Forgetful(Operations):
    def __init__(self) -> None:
        self.forgotten: list[tuple[int, int]] = []

    def forget(self, nodeid: int, nlookup: int) -> None:
        self.forgotten.append((nodeid, nlookup))


def test_forget_and_batch_forget_reach_forget_and_are_not_answered(wire: Wire) -> None:
    ops = wire.session.ops = Forgetful()
    forget = wire.request(3, abi.Opcode.FORGET)
    HANDLERS[abi.Opcode.FORGET].bind(wire.session)(forget, memoryview(abi.FORGET_IN.pack(2)))
    batch = wire.request(5, abi.Opcode.BATCH_FORGET)
    body = abi.BATCH_FORGET_IN.pack(2, 0) + abi.FORGET_ONE.pack(7, 1) + abi.FORGET_ONE.pack(9, 4)
    HANDLERS[abi.Opcode.BATCH_FORGET].bind(wire.session)(batch, memoryview(body))
    assert ops.forgotten == [(1, 2), (7, 1), (9, 4)]
    assert abi.Opcode.FORGET in NO_REPLY and abi.Opcode.BATCH_FORGET in NO_REPLY
