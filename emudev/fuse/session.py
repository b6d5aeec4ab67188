"""The request loop over a mounted /dev/fuse descriptor: read, dispatch, reply, notify.

Workers block in read(2) on the one device descriptor, each into a buffer of
its own, decode the request through the opcode table and call the file system.
One worker is the default: no handler waits (a blocking call's reply is
deferred), and the kernel hands requests to waiting readers in turn, so a
second worker makes every request wake the thread that slept longest, often on
the other CPU, and take the GIL from the first. On the project's 2-vCPU
machines it bought nothing: pinned round trips were equal or a little slower
(12.9 against 13.5 µs on one CPU) and 8 clients got 3,220 jobs/s against 3,676.
Neither per-worker clones of the descriptor (FUSE_DEV_IOC_CLONE) nor a fresh
read(2) buffer per request did better, so there are neither.

Work a handler need not finish before its caller returns goes to ``after_reply``:
the worker runs it once the reply is written, before it reads the next request,
as the kernel hands such work to a workqueue instead of doing it in the syscall.
The caller's wake-up, often a cross-CPU one, then overlaps with that work.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import struct
import threading
from collections.abc import Callable

from emudev.fuse import abi
from emudev.fuse.dispatch import HANDLERS, NO_REPLY, Call, Encoder
from emudev.fuse.notify import Notifier
from emudev.fuse.ops import ConnInfo, Deferred, Operations
from emudev.fuse.pending import PendingRequests
from emudev.fuse.request import Request, write_message

log = logging.getLogger("emudev.fuse")
# A worker thread's work to run after its current request: see after_reply().
_worker = threading.local()

MAX_PAGES = 256
# Why one: see the module docstring.
DEFAULT_WORKERS = 1
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Without FUSE_MAX_PAGES the kernel keeps its historical limit of 32 pages per request.
_DEFAULT_MAX_PAGES = 32
# read(2) on the device fails transiently with these; libfuse retries them too.
_RETRY_READ = frozenset({errno.EINTR, errno.EAGAIN, errno.ENOENT})

# Deliberately absent: POSIX_LOCKS and EXPORT_SUPPORT (the kernel keeps locks locally; no NFS
# export), and WRITEBACK_CACHE, which would let the kernel delay and merge writes to the device.
_WANTED_FLAGS = (abi.ASYNC_READ | abi.HAS_IOCTL_DIR | abi.PARALLEL_DIROPS | abi.MAX_PAGES | abi.INIT_EXT
                 | abi.DIRECT_IO_ALLOW_MMAP)


def after_reply(work: Callable[[], object]) -> None:
    """Run ``work`` once the request this worker thread is handling has been answered (or its
    reply deferred), before the worker reads the next one; at once on any other thread."""
    queue: list[Callable[[], object]] | None = getattr(_worker, "after", None)
    if queue is None:
        work()
    else:
        queue.append(work)


def _run_after(queue: list[Callable[[], object]]) -> None:
    """In order, including work queued by the work itself; a failure is logged and the rest runs."""
    while queue:
        work = queue.pop(0)
        try:
            work()
        except Exception:
            log.exception("work after a reply failed")


class Session:
    """Serves one FUSE connection with ``workers`` threads.

    ``passthrough=True`` asks for FUSE_PASSTHROUGH (kernel 6.9+, needs
    CAP_SYS_ADMIN to register backing files); ``conn.passthrough`` tells whether it
    was granted.
    """

    def __init__(self, fd: int, ops: Operations, *, workers: int = DEFAULT_WORKERS, passthrough: bool = False,
                 max_readahead: int | None = None) -> None:
        if workers < 1:
            raise ValueError("at least one worker is needed")
        self.fd = fd
        self._served: dict[int, tuple[Call, Encoder | None]] = {}
        self.ops = ops
        self.workers = workers
        self.passthrough = passthrough
        self.max_readahead = max_readahead
        self.conn: ConnInfo | None = None
        self._initialised = threading.Event()
        self.pending = PendingRequests()
        self._local = threading.local()
        self._notifier = Notifier(fd, may_block=lambda: not self._in_worker())
        self._state_lock = threading.Lock()
        self._serving = False
        self._destroyed = False
        self._closed = False

    @property
    def ops(self) -> Operations:
        return self._ops

    @ops.setter
    def ops(self, ops: Operations) -> None:
        """Serve ``ops`` from now on, its operations looked up once here rather than per request."""
        self._ops = ops
        self._served = {opcode: (handler.bind(self), handler.encode) for opcode, handler in HANDLERS.items()}

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The loop

    def serve(self) -> None:
        """Answer requests until the connection ends (unmount, abort), then call ``ops.destroy()``."""
        with self._state_lock:
            if self._serving or self._closed:
                raise RuntimeError("session is already serving or closed")
            self._serving = True
        try:
            threads = [threading.Thread(target=self._work, name=f"fuse-worker-{i}", daemon=True)
                       for i in range(1, self.workers)]
            for thread in threads:
                thread.start()
            self._work()
            for thread in threads:
                thread.join()
        finally:
            self.destroy_once()
            with self._state_lock:
                self._serving = False

    def wait_initialised(self, timeout: float = 10.0) -> ConnInfo:
        """Block until INIT was negotiated (the kernel sends it right after the mount)."""
        if not self._initialised.wait(timeout) or self.conn is None:
            raise TimeoutError("the kernel sent no FUSE INIT")
        return self.conn

    def close(self) -> None:
        """Release the device descriptor; replies still in flight become no-ops.

        The connection itself ends by unmounting, which also makes ``serve()``
        return; closing while it runs would pull the descriptor from under blocked reads.
        """
        with self._state_lock:
            if self._serving:
                raise RuntimeError("serve() is still running: unmount first")
            if self._closed:
                return
            self._closed = True
        self.pending.close()
        self._notifier.close()
        os.close(self.fd)

    def _in_worker(self) -> bool:
        return getattr(self._local, "worker", False)

    def _work(self) -> None:
        """Read, register and dispatch requests until the kernel ends the connection (ENODEV).

        One loop without helpers: it runs once per request, and a call and a tuple
        per request are a measurable share of an ioctl round trip.
        """
        self._local.worker = True
        _worker.after = after = []
        # The largest request is a WRITE or ioctl of max_pages pages plus its headers.
        buf = bytearray(MAX_PAGES * PAGE_SIZE + PAGE_SIZE)
        view = memoryview(buf)
        # readinto() of a FileIO costs less per call than os.readv(); it reports EAGAIN as None.
        device = io.FileIO(self.fd, closefd=False)
        pending, header = self.pending, abi.IN_HEADER
        try:
            while True:
                try:
                    size = device.readinto(buf)
                except OSError as e:
                    if e.errno in _RETRY_READ:
                        continue
                    if e.errno == errno.ENODEV:
                        return
                    raise
                if size is None:
                    continue
                req = Request(self, header.unpack_from(buf))
                if req.opcode not in NO_REPLY:
                    pending.add(req)
                self._dispatch(req, view[header.size: size])
                if after:
                    _run_after(after)
        except OSError:
            log.exception("FUSE worker stopped: reading the device failed")

    def _dispatch(self, req: Request, body: memoryview) -> None:
        served = self._served.get(req.opcode)
        try:
            if served is None:
                raise OSError(errno.ENOSYS, "opcode not served")
            call, encode = served
            result = call(req, body)
            if encode is not None and not isinstance(result, Deferred):
                req.send(0, encode(req, result))
        except Exception as e:
            self._fail(req, e)

    def _fail(self, req: Request, exc: Exception) -> None:
        """Turn a handler's exception into the reply: its errno if it has one, else EIO and a traceback.

        Nothing may escape from here: the worker would die with it.
        """
        err = exc.errno if isinstance(exc, OSError) else None
        if not err:
            log.error("%r failed", req, exc_info=exc)
        if req.opcode in NO_REPLY or req.replied:
            if err:
                log.warning("%r failed after its reply: %s", req, exc)
            return
        try:
            req.reply_error(err or errno.EIO)
        except (RuntimeError, OSError) as e:  # replied meanwhile by another thread, or the write failed
            log.warning("%r: error reply not sent: %s", req, e)

    # Connection setup and teardown, called through the opcode table

    def negotiate(self, body: memoryview) -> bytes:
        """Settle INIT, tell the file system, and return the fuse_init_out to reply with."""
        conn = self.conn = self._settle(body)
        log.info("FUSE %d.%d negotiated (kernel 7.%d), flags %#x of %#x offered", conn.proto_major,
                 conn.proto_minor, conn.kernel_minor, conn.flags, conn.kernel_flags)
        init = getattr(self.ops, "init", None)
        if init is not None:
            init(conn)
        self._initialised.set()
        return abi.INIT_OUT.pack(conn.proto_major, conn.proto_minor, conn.max_readahead,
                                 conn.flags & 0xFFFFFFFF, 0, 0, conn.max_write, 1, conn.max_pages, 0,
                                 conn.flags >> 32, 1 if conn.passthrough else 0)

    def _settle(self, body: memoryview) -> ConnInfo:
        """Protocol 7.min(kernel, ours) and the flags both sides want, from fuse_init_in."""
        major, kernel_minor, max_readahead, kernel_flags = abi.INIT_IN.unpack_from(body)
        if major != abi.KERNEL_VERSION or kernel_minor < abi.MIN_KERNEL_MINOR_VERSION:
            log.error("kernel speaks FUSE %d.%d; this daemon needs %d.%d or later", major, kernel_minor,
                      abi.KERNEL_VERSION, abi.MIN_KERNEL_MINOR_VERSION)
            raise OSError(errno.EPROTO, "unsupported FUSE protocol")
        if kernel_flags & abi.INIT_EXT and len(body) >= abi.INIT_IN.size + abi.INIT_IN_FLAGS2.size:
            (flags2,) = abi.INIT_IN_FLAGS2.unpack_from(body, abi.INIT_IN.size)
            kernel_flags |= flags2 << 32
        flags = kernel_flags & (_WANTED_FLAGS | (abi.PASSTHROUGH if self.passthrough else 0))
        max_pages = MAX_PAGES if flags & abi.MAX_PAGES else _DEFAULT_MAX_PAGES
        return ConnInfo(
            proto_major=abi.KERNEL_VERSION, proto_minor=min(kernel_minor, abi.KERNEL_MINOR_VERSION),
            kernel_minor=kernel_minor, kernel_flags=kernel_flags, flags=flags,
            max_readahead=max_readahead if self.max_readahead is None else min(max_readahead, self.max_readahead),
            max_write=max_pages * PAGE_SIZE, max_pages=max_pages, passthrough=bool(flags & abi.PASSTHROUGH),
            direct_io_mmap=bool(flags & abi.DIRECT_IO_ALLOW_MMAP))

    def destroy_once(self) -> None:
        """Call ``ops.destroy()`` once per negotiated connection, whether DESTROY came or not."""
        with self._state_lock:
            if self._destroyed or self.conn is None:
                return
            self._destroyed = True
        destroy = getattr(self.ops, "destroy", None)
        if destroy is not None:
            destroy()

    # Notifications: unique 0, the notify code in the error field

    @staticmethod
    def _notification(code: abi.NotifyCode, *payload: bytes) -> list[bytes]:
        size = abi.OUT_HEADER.size + sum(len(p) for p in payload)
        return [abi.OUT_HEADER.pack(size, code, 0), *payload]

    def notify_poll(self, kh: int) -> None:
        """Wake the poll/select/epoll waiters of the file handle the kernel named ``kh`` in POLL.

        Written directly from the calling thread, handlers included: the kernel
        only wakes waiters and sends nothing back for it.
        """
        write_message(self.fd, self._notification(abi.NotifyCode.POLL, abi.NOTIFY_POLL_WAKEUP_OUT.pack(kh)))

    def notify_inval_inode(self, nodeid: int, offset: int = 0, length: int = 0, *,
                           wait: bool = False, then: Callable[[], None] | None = None) -> None:
        """Drop the kernel's cached pages of ``nodeid`` in [offset, offset+length) (length 0: to the end;
        offset < 0: attributes only), writing dirty pages back first.

        Sent from the notifier thread; ``wait`` blocks until the kernel is done and
        is refused on a worker thread, which the kernel may need for the writeback.
        """
        self._notifier.send(self._notification(abi.NotifyCode.INVAL_INODE, abi.NOTIFY_INVAL_INODE_OUT.pack(
            nodeid, offset, length)), wait=wait, then=then)

    def notify_inval_entry(self, parent: int, name: bytes) -> None:
        """Make the kernel forget the dentry ``name`` in ``parent``, so an inode nobody uses any
        more is evicted and FORGET comes. Sent from the notifier thread, like INVAL_INODE."""
        self._notifier.send(self._notification(abi.NotifyCode.INVAL_ENTRY, abi.NOTIFY_INVAL_ENTRY_OUT.pack(
            parent, len(name), 0), name + b"\0"), wait=False)

    def notify_store(self, nodeid: int, offset: int, data: bytes, *, wait: bool = False,
                     then: Callable[[], None] | None = None) -> None:
        """Put ``data`` into the kernel's page cache of ``nodeid`` at ``offset``; existing mappings see it.

        Same threading rules as ``notify_inval_inode``.
        """
        self._notifier.send(self._notification(abi.NotifyCode.STORE, abi.NOTIFY_STORE_OUT.pack(
            nodeid, offset, len(data), 0), bytes(data)), wait=wait, then=then)

    # Passthrough backing files

    def backing_open(self, fd: int) -> int:
        """Register ``fd`` as a passthrough backing file, for ``Opened.passthrough_backing_id``."""
        return fcntl.ioctl(self.fd, abi.DEV_IOC_BACKING_OPEN, bytearray(abi.BACKING_MAP.pack(fd, 0, 0)), True)

    def backing_close(self, backing_id: int) -> None:
        fcntl.ioctl(self.fd, abi.DEV_IOC_BACKING_CLOSE, bytearray(struct.pack("I", backing_id)), True)
