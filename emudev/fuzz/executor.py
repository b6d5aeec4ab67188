"""Issuing plans: in this process, or in a forked helper process driven over a pipe.

The executor owns a small region of pages laid out as [read-write][PROT_NONE] pairs
(electric fence): the argument and every user pointer's payload are placed so that
their last byte is the last byte of a read-write page, so the daemon's
process_vm_readv/writev of even one byte too many hits the PROT_NONE page (EFAULT)
instead of this process's heap, and a GUARD pointer points into such a page.
Deadlines are written at the moment of the call, from CLOCK_MONOTONIC, and fd tickets
a call leaves in its out fields are claimed at once, as libaccel's claim_fd() does.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import select
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

from emudev.fuzz.plan import BUFFER, GUARD, NULL, WILD, CallPlan, CallResult, get_int, put_int
from emudev.uapi import defs
from emudev.uapi.types import ioc_size

PAGE = mmap.PAGESIZE
SLOT_PAGES = 5  # the argument (and a by-value one's string) can be as long as _IOC_SIZE allows (16 KiB - 1)
SLOTS = 6       # pointers per request (SUBMIT and VERSION have three)
PROT_NONE = 0

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int
_mprotect = _libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_mprotect.restype = ctypes.c_int


def raw_ioctl(fd: int, cmd: int, arg: int) -> int:
    """ioctl(2) with a raw argument; the errno, or 0."""
    ret = _ioctl(fd, cmd, arg)
    return ctypes.get_errno() if ret == -1 else 0


class Executor:
    """Issues CallPlans in the calling process."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        # Slot 0 is the argument, the others its pointers' payloads: SLOT_PAGES read-write
        # pages each, followed by one PROT_NONE page.
        self._sizes = [SLOT_PAGES * PAGE] * (1 + SLOTS)
        total = sum(size + PAGE for size in self._sizes)
        self._map = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._ends: list[int] = []
        at = base
        for size in self._sizes:
            at += size
            if _mprotect(at, PAGE, PROT_NONE):
                raise OSError(ctypes.get_errno(), "mprotect")
            self._ends.append(at)
            at += PAGE

    def guard_address(self, slot: int = 0) -> int:
        """An address inside an inaccessible page."""
        return self._ends[slot] + 16

    def _place(self, slot: int, data: bytes) -> int:
        if len(data) > self._sizes[slot]:
            raise ValueError(f"{len(data)} bytes do not fit slot {slot}")
        address = self._ends[slot] - len(data)
        if data:
            ctypes.memmove(address, data, len(data))
        return address

    def run(self, plan: CallPlan) -> CallResult:
        """Issue the request; the errno (0 on success), the argument afterwards, claimed fds."""
        arg = bytearray(plan.arg)
        for slot, pointer in enumerate(plan.pointers, start=1):
            if pointer.kind == BUFFER and plan.by_value:
                # The FUSE kernel copies _IOC_SIZE bytes from a by-value argument as if it
                # pointed to the argument: keep that much readable behind the string.
                address = self._place(slot, pointer.payload + bytes(max(16, ioc_size(plan.cmd))))
            elif pointer.kind == BUFFER:
                address = self._place(slot, pointer.payload)
            elif pointer.kind == GUARD:
                address = self.guard_address(slot)
            elif pointer.kind == WILD:
                address = pointer.value
            else:
                address = 0
            size = min(8, len(arg) - pointer.offset)
            if size > 0:
                put_int(arg, pointer.offset, size, address)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for deadline in plan.deadlines:
            if deadline.offset + 8 <= len(arg):
                put_int(arg, deadline.offset, 8, now + deadline.delta_ns)
        address = self._place(0, bytes(arg))
        if plan.by_value:
            value = get_int(arg, 0, min(8, len(arg)))
        else:
            value = {NULL: 0, GUARD: self.guard_address(0)}.get(plan.arg_kind, address)
        start = time.monotonic()
        ret = _ioctl(plan.fd, plan.cmd, value)
        err = ctypes.get_errno() if ret == -1 else 0
        elapsed = time.monotonic() - start
        out = ctypes.string_at(address, len(arg)) if plan.arg_kind == BUFFER else b""
        claimed = []
        for offset, size in plan.ticket_fields:
            if offset + size <= len(out):
                found = self.claim(get_int(out, offset, size, signed=True))
                if found is not None:
                    claimed.append(found)
        return CallResult(err, ret, out, elapsed, claimed)

    # ------------------------------------------------------------------ files

    def claim(self, value: int) -> tuple[int, str] | None:
        """The descriptor behind an fd ticket, and what kind of file it is; None if `value` is none."""
        if value > defs.DRM_EMUDEV_FD_TICKET_MAX:
            return None
        path = os.path.join(self.mountpoint, "fd", str(-value))
        for mode in (os.O_RDWR, os.O_RDONLY):
            try:
                fd = os.open(path, mode | os.O_CLOEXEC)
            except PermissionError:
                continue
            except OSError:
                return None
            return fd, self.classify(fd)
        return None

    def classify(self, fd: int) -> str:
        """sync_file, dma_buf or syncobj: the first of their harmless requests the file knows."""
        info = ctypes.create_string_buffer(ctypes.sizeof(defs.sync_file_info))
        if raw_ioctl(fd, defs.SYNC_IOC_FILE_INFO, ctypes.addressof(info)) == 0:
            return "sync_file"
        flags = ctypes.create_string_buffer(8)  # flags 0: EINVAL from a dma-buf, ENOTTY elsewhere
        if raw_ioctl(fd, defs.DMA_BUF_IOCTL_SYNC, ctypes.addressof(flags)) == errno.EINVAL:
            return "dma_buf"
        return "syncobj"

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def eventfd(self) -> int:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def write_bo(self, dmabuf_fd: int, offset: int, data: bytes) -> None:
        """Write `data` into a BO through a mapping of its dma-buf, bracketed by DMA_BUF_IOCTL_SYNC."""
        length = (offset + len(data) + PAGE - 1) // PAGE * PAGE
        self._sync(dmabuf_fd, defs.DMA_BUF_SYNC_WRITE | defs.DMA_BUF_SYNC_START)
        with mmap.mmap(dmabuf_fd, length, flags=mmap.MAP_SHARED) as view:
            view[offset:offset + len(data)] = data
        self._sync(dmabuf_fd, defs.DMA_BUF_SYNC_WRITE | defs.DMA_BUF_SYNC_END)

    @staticmethod
    def _sync(fd: int, flags: int) -> None:
        sync = ctypes.create_string_buffer(struct.pack("<Q", flags), 8)
        err = raw_ioctl(fd, defs.DMA_BUF_IOCTL_SYNC, ctypes.addressof(sync))
        if err:
            raise OSError(err, f"DMA_BUF_IOCTL_SYNC: {os.strerror(err)}")


# --------------------------------------------------------------------------- helper process


def _send(fd: int, message: Any) -> None:
    data = pickle.dumps(message)
    os.write(fd, struct.pack("<I", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> Any:
    head = _read_exact(fd, 4)
    return pickle.loads(_read_exact(fd, struct.unpack("<I", head)[0]))


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("helper pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class HelperTimeout(Exception):
    """The helper did not answer in time: the request it is issuing hangs."""


class Helper:
    """A forked process issuing requests for the fuzzer: ("run", plan) or (method, *args) of its Executor."""

    def __init__(self, mountpoint: str) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            _child(mountpoint, req_r, rep_w)
        os.close(req_r)
        os.close(rep_w)
        self.pid = pid
        self._req = req_w
        self._rep = rep_r
        self.alive = True

    def call(self, message: tuple[Any, ...], timeout: float) -> Any:
        """Send a request and wait at most `timeout` seconds for its answer."""
        self.send(message)
        return self.reply(timeout)

    def send(self, message: tuple[Any, ...]) -> None:
        _send(self._req, message)

    def reply(self, timeout: float) -> Any:
        ready, _, _ = select.select([self._rep], [], [], timeout)
        if not ready:
            raise HelperTimeout(f"no answer within {timeout}s")
        status, value = _recv(self._rep)
        if status == "error":
            raise OSError(*value)
        return value

    def kill(self) -> None:
        """SIGKILL, whatever it is doing, and reap it."""
        if self.alive:
            self.alive = False
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self._close()

    def exit(self, timeout: float = 5.0) -> None:
        """Ask it to exit (the kernel closes its files); kill it if it does not."""
        if not self.alive:
            return
        try:
            self.send(("exit",))
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.alive = False
                self._close()
                return
            time.sleep(0.002)
        self.kill()

    def _close(self) -> None:
        for fd in (self._req, self._rep):
            try:
                os.close(fd)
            except OSError:
                pass


def _child(mountpoint: str, req: int, rep: int) -> None:  # pragma: no cover - runs in the child
    """The helper's loop. Inherited descriptors are closed first: the parent's files must
    be released when the parent closes them, not kept alive by this copy."""
    code = 0
    try:
        keep = {0, 1, 2, req, rep}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        executor = Executor(mountpoint)
        handlers: dict[str, Callable[..., Any]] = {
            "run": executor.run, "open": executor.open, "close": executor.close, "eventfd": executor.eventfd,
            "write_bo": executor.write_bo, "claim": executor.claim,
        }
        while True:
            try:
                message = _recv(req)
            except EOFError:
                break
            if message[0] == "exit":
                break
            try:
                _send(rep, ("ok", handlers[message[0]](*message[1:])))
            except OSError as e:
                _send(rep, ("error", (e.errno or errno.EIO, str(e))))
    except BaseException:
        code = 1
    finally:
        os._exit(code)
