"""Forked helper processes for the mounted tests: a child runs a function, talks to the
test over a SOCK_SEQPACKET socketpair (pickled values, descriptors by SCM_RIGHTS), and is
always gone when the test leaves the `forked` block; a child that failed reports its
traceback as the test's failure. A touch of a mapping that may fault runs in a child too."""

from __future__ import annotations

import faulthandler
import mmap
import os
import pickle
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

IPC_TIMEOUT = 10.0


class Channel:
    """One end of a SOCK_SEQPACKET socketpair: a pickled value and optional fds per message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(IPC_TIMEOUT)

    def send(self, value: Any = None, fds: tuple[int, ...] | list[int] | None = ()) -> None:
        data = pickle.dumps(value)
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[Any, list[int]]:
        data, fds, flags, _ = socket.recv_fds(self.sock, 1 << 20, 16)
        if not data:
            raise EOFError("the peer closed its end")
        assert not flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC), "message or descriptors truncated"
        return pickle.loads(data), fds

    def close(self) -> None:
        self.sock.close()


@dataclass
class Child:
    pid: int
    chan: Channel
    _errors: int
    status: int | None = None

    def wait(self, timeout: float = IPC_TIMEOUT) -> int:
        """The child's wait status; a child still running at the deadline is killed and reported."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
            elif time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"child {self.pid} did not end within {timeout}s")
            else:
                time.sleep(0.002)
        return self.status

    def error_text(self) -> str:
        chunks = []
        while chunk := os.read(self._errors, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def recv(self) -> tuple[Any, list[int]]:
        """The child's next message; if it died instead, its traceback is the failure."""
        try:
            return self.chan.recv()
        except EOFError:
            self.wait()
            raise AssertionError(f"child ended ({self.status:#x}) before answering:\n{self.error_text()}") from None

    def kill(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.wait()

    def join(self, timeout: float = IPC_TIMEOUT) -> None:
        """Wait for a clean exit; a failed child's traceback becomes the assertion message."""
        status = self.wait(timeout)
        assert os.waitstatus_to_exitcode(status) == 0, f"child failed ({status:#x}):\n{self.error_text()}"


@contextmanager
def forked(body: Callable[[Channel], None]) -> Iterator[Child]:
    """Run body(channel) in a forked child; whatever happens, the child is gone afterwards."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            mine.close()
            os.close(err_r)
            body(Channel(theirs))
            code = 0
        except BaseException:
            try:
                os.write(err_w, traceback.format_exc().encode())
            except BaseException:
                pass
        finally:
            os._exit(code)
    theirs.close()
    os.close(err_w)
    child = Child(pid, Channel(mine), err_r)
    try:
        yield child
    finally:
        if child.status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        child.chan.close()
        os.close(err_r)


def touch_in_grandchild(mapping: mmap.mmap, position: int, write: bool = False) -> tuple[int, bytes]:
    """Touch `mapping` at `position` in a forked child: its wait status and whatever bytes it read."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()  # die of the signal itself, without a traceback on stderr
            os.close(r)
            if write:
                mapping[position] = 0xEE
            os.write(w, mapping[position: position + 16])
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return status, f.read()


def assert_sigbus(outcome: tuple[int, bytes]) -> None:
    status, data = outcome
    assert data == b"", f"the touch returned bytes {data!r}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS, f"wait status {status:#x}"
