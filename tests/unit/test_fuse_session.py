"""The FUSE layer against the real kernel: a tiny file system served by a child process.

The client (this process) and the daemon must be separate processes: the kernel
parks the client's syscall until the daemon answers. Every mount is detached in
a finally, even when the daemon was killed on purpose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import mmap
import multiprocessing
import os
import select
import signal
import stat
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from emudev.fuse import (
    DEFERRED,
    Attr,
    ConnInfo,
    Deferred,
    DirEntry,
    Entry,
    IoctlResult,
    MountError,
    Opened,
    Operations,
    Request,
    Session,
    StatFs,
    abi,
    after_reply,
    is_mounted,
    mount,
    unmount,
)


def _fuse_unusable() -> str | None:
    if os.geteuid() != 0:
        return "these tests mount with mount(2) and need root"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    return None


pytestmark = pytest.mark.skipif(_fuse_unusable() is not None, reason=str(_fuse_unusable()))

ROOT, DEV, LINK, CACHED, PT, MAPPED = abi.ROOT_ID, 2, 3, 4, 5, 6
DT_DIR, DT_REG, DT_LNK = 4, 8, 10
NAMES = {b"dev": DEV, b"link": LINK, b"cached": CACHED, b"pt": PT, b"mapped": MAPPED}
ORIGINAL, STORED = b"original-data", b"STORED--DATA!"
BACKING = b"backing file content"


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("E") << 8) | nr


IOC_ECHO = _iowr(1, 8)  # returns the u64 plus one
IOC_FAIL = _iowr(2, 8)  # returns -EINVAL, but still copies the u64 plus one back
IOC_SLOW = _iowr(3, 8)  # like ECHO, replied 200 ms later from another thread
IOC_BLOCK = _iowr(4, 8)  # never answered unless the caller is interrupted
IOC_STATS = _iowr(5, 8)  # how many interrupt callbacks ran
IOC_STORE = _iowr(6, 8)  # notify_store STORED into "cached"; returns 1 if a worker was refused wait=True
IOC_INVAL = _iowr(7, 8)  # notify_inval_inode("cached", wait=True) from a helper thread, then reply
IOC_AFTER = _iowr(8, 8)  # returns how many after-reply works finished, and queues one that takes 0.3 s
AFTER_WORK_S = 0.3
U64 = struct.Struct("Q")


def _later(delay: float, fn: Callable[..., object], *args: object) -> None:
    """Run ``fn`` on another thread after ``delay`` s, without keeping the daemon process alive."""
    timer = threading.Timer(delay, fn, args)
    timer.daemon = True
    timer.start()


class ExampleFs(Operations):
    """Root directory with a direct-I/O file "dev", a symlink "link" -> "dev", a page-cached file
    "cached" whose daemon-side content never changes, "pt", passed through to ``backing``, and
    "mapped", direct I/O but mappable, whose reads say who asked: "P" the page cache, "R" read(2)."""

    def __init__(self, report: Callable[[dict], None], backing: str) -> None:
        self.report = report
        self.backing = backing
        self.backing_id: int | None = None
        self.content = bytearray(b"hello world")
        self.readable = threading.Event()
        self.interrupts = 0
        self.after_done = 0
        self.ioctls: dict[int, Callable[[Request, int], IoctlResult | Deferred]] = {
            IOC_ECHO: lambda req, value: IoctlResult(0, U64.pack(value + 1)),
            IOC_FAIL: lambda req, value: IoctlResult(-errno.EINVAL, U64.pack(value + 1)),
            IOC_SLOW: self._slow,
            IOC_BLOCK: self._block,
            IOC_STATS: lambda req, value: IoctlResult(0, U64.pack(self.interrupts)),
            IOC_STORE: self._store,
            IOC_INVAL: self._inval,
            IOC_AFTER: self._after,
        }

    def init(self, conn: ConnInfo) -> None:
        self.report(dataclasses.asdict(conn))

    def _attr(self, ino: int) -> Attr:
        modes = {ROOT: (stat.S_IFDIR | 0o755, 0), DEV: (stat.S_IFREG | 0o666, len(self.content)),
                 LINK: (stat.S_IFLNK | 0o777, 3), CACHED: (stat.S_IFREG | 0o444, len(ORIGINAL)),
                 PT: (stat.S_IFREG | 0o444, len(BACKING)), MAPPED: (stat.S_IFREG | 0o666, 1 << 20)}
        if ino not in modes:
            raise OSError(errno.ENOENT, "no such node")
        mode, size = modes[ino]
        return Attr(ino=ino, mode=mode, size=size, nlink=2 if ino == ROOT else 1)

    def lookup(self, req: Request, parent: int, name: bytes) -> Entry:
        ino = NAMES.get(name) if parent == ROOT else None
        if ino is None:
            raise OSError(errno.ENOENT, "no such entry")
        return Entry(ino, self._attr(ino))

    def getattr(self, req: Request, nodeid: int, fh: int | None) -> Attr:
        return self._attr(nodeid)

    def readlink(self, req: Request, nodeid: int) -> bytes:
        return b"dev"

    def opendir(self, req: Request, nodeid: int, flags: int) -> Opened:
        return Opened(fh=0)

    def readdir(self, req: Request, nodeid: int, fh: int, offset: int) -> list[DirEntry]:
        entries = [(b".", ROOT), (b"..", ROOT), *NAMES.items()]
        types = {ROOT: DT_DIR, LINK: DT_LNK}
        return [DirEntry(name, ino, types.get(ino, DT_REG), cookie)
                for cookie, (name, ino) in enumerate(entries, start=1) if cookie > offset]

    def releasedir(self, req: Request, nodeid: int, fh: int) -> None:
        pass

    def open(self, req: Request, nodeid: int, flags: int) -> Opened:
        if nodeid == CACHED:
            return Opened(fh=8, keep_cache=True)
        if nodeid == PT:
            return Opened(fh=9, passthrough_backing_id=self._backing_id(req.session))
        if nodeid == MAPPED:
            return Opened(fh=10, direct_io=True, shared_mmap=True)
        return Opened(fh=7, direct_io=True)

    def _backing_id(self, session: Session) -> int:
        """Every open of one inode must pass through to the same backing file."""
        if self.backing_id is None:
            fd = os.open(self.backing, os.O_RDONLY)
            try:
                self.backing_id = session.backing_open(fd)
            finally:
                os.close(fd)
        return self.backing_id

    def read(self, req: Request, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        if nodeid == MAPPED:
            return (b"P" if req.page_cache else b"R") * size
        content = {CACHED: ORIGINAL, PT: b"not passed through!"}.get(nodeid, self.content)
        return bytes(content[offset: offset + size])

    def write(self, req: Request, nodeid: int, fh: int, offset: int, data: memoryview) -> int:
        self.content[offset: offset + len(data)] = data
        return len(data)

    def flush(self, req: Request, nodeid: int, fh: int, lock_owner: int) -> None:
        pass

    def release(self, req: Request, nodeid: int, fh: int, flags: int) -> None:
        pass

    def statfs(self, req: Request, nodeid: int) -> StatFs:
        return StatFs(blocks=1000, bfree=500, bavail=400, files=10, ffree=5)

    def access(self, req: Request, nodeid: int, mask: int) -> None:
        if nodeid == DEV and mask & os.X_OK:
            raise OSError(errno.EACCES, "not executable")

    def ioctl(self, req: Request, nodeid: int, fh: int, cmd: int, arg: int, in_data: memoryview,
              out_size: int, flags: int) -> IoctlResult | Deferred:
        handler = self.ioctls.get(cmd)
        if handler is None:
            raise OSError(errno.ENOTTY, "unknown ioctl")
        (value,) = U64.unpack(in_data)
        return handler(req, value)

    def _slow(self, req: Request, value: int) -> Deferred:
        _later(0.2, req.reply_ioctl, 0, U64.pack(value + 1))
        return DEFERRED

    def _block(self, req: Request, value: int) -> Deferred:
        def interrupted(r: Request) -> None:
            self.interrupts += 1
            r.reply_error(errno.EINTR)

        def give_up() -> None:  # keeps a broken interrupt path from hanging the test
            if not req.replied:
                req.reply_ioctl(0, U64.pack(0))

        req.on_interrupt(interrupted)
        _later(5.0, give_up)
        return DEFERRED

    def _store(self, req: Request, value: int) -> IoctlResult:
        try:
            req.session.notify_store(CACHED, 0, STORED, wait=True)
            refused = 0
        except RuntimeError:
            refused = 1
        req.session.notify_store(CACHED, 0, STORED)
        return IoctlResult(0, U64.pack(refused))

    def _inval(self, req: Request, value: int) -> Deferred:
        def invalidate() -> None:
            req.session.notify_inval_inode(CACHED, wait=True)
            req.reply_ioctl(0, U64.pack(value))

        threading.Thread(target=invalidate).start()
        return DEFERRED

    def _after(self, req: Request, value: int) -> IoctlResult:
        def work() -> None:
            time.sleep(AFTER_WORK_S)
            self.after_done += 1

        after_reply(work)
        return IoctlResult(0, U64.pack(self.after_done))

    def poll(self, req: Request, nodeid: int, fh: int, kh: int | None, flags: int, events: int) -> int:
        if self.readable.is_set():
            return select.POLLIN
        if kh is not None:
            def wake() -> None:
                self.readable.set()
                req.session.notify_poll(kh)

            _later(0.2, wake)
        return 0


def _serve(mountpoint: str, workers: int, use_fusermount: bool, passthrough: bool,
           pipe: multiprocessing.connection.Connection) -> None:
    """Daemon side: mount, report, serve until unmounted; exit code 0 means serve() returned."""
    backing = os.path.join(os.path.dirname(mountpoint), "backing")
    with open(backing, "wb") as f:
        f.write(BACKING)
    fd = mount(mountpoint, default_permissions=False, use_fusermount=use_fusermount)
    with Session(fd, ExampleFs(pipe.send, backing), workers=workers, passthrough=passthrough) as session:
        pipe.send("mounted")
        session.serve()


@dataclasses.dataclass
class Server:
    mountpoint: Path
    proc: multiprocessing.process.BaseProcess
    conn: dict

    @property
    def dev(self) -> str:
        return str(self.mountpoint / "dev")


@contextmanager
def serving(mountpoint: Path, *, workers: int = 2, use_fusermount: bool = False,
            passthrough: bool = False) -> Iterator[Server]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(str(mountpoint), workers, use_fusermount, passthrough, theirs),
                       daemon=True)
    proc.start()
    try:
        messages = [ours.recv() if ours.poll(10) else None for _ in range(2)]
        conn = next((m for m in messages if isinstance(m, dict)), None)
        assert "mounted" in messages and conn is not None, f"daemon did not come up: {messages}"
        yield Server(mountpoint, proc, conn)
    finally:
        if is_mounted(str(mountpoint)):
            unmount(str(mountpoint), lazy=True)
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serving(mountpoint) as s:
        yield s


def _ioctl(fd: int, cmd: int, value: int) -> tuple[int, int]:
    buf = bytearray(U64.pack(value))
    result = fcntl.ioctl(fd, cmd, buf, True)
    return result, U64.unpack(buf)[0]


@contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR)
    try:
        yield fd
    finally:
        os.close(fd)


def test_init_negotiates_a_modern_protocol(server: Server) -> None:
    conn = server.conn
    assert conn["proto_major"] == 7 and conn["proto_minor"] >= 31
    assert conn["max_pages"] == 256 and conn["max_write"] == 256 * os.sysconf("SC_PAGE_SIZE")
    wanted = abi.ASYNC_READ | abi.HAS_IOCTL_DIR | abi.PARALLEL_DIROPS | abi.MAX_PAGES
    assert conn["flags"] & wanted == wanted & conn["kernel_flags"]
    assert not conn["flags"] & abi.WRITEBACK_CACHE
    assert not conn["passthrough"]


def test_lookup_getattr_readdir_readlink(server: Server) -> None:
    assert sorted(os.listdir(server.mountpoint)) == sorted(name.decode() for name in NAMES)
    st = os.stat(server.dev)
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(b"hello world") and st.st_ino == DEV
    assert stat.S_ISDIR(os.stat(server.mountpoint).st_mode)
    assert os.readlink(server.mountpoint / "link") == "dev"
    with pytest.raises(FileNotFoundError):
        os.stat(server.mountpoint / "missing")


def test_open_read_write_release(server: Server) -> None:
    with _opened(server.dev) as fd:
        assert os.pread(fd, 5, 0) == b"hello"
        assert os.pwrite(fd, b"HELLO", 0) == 5
        assert os.pread(fd, 100, 0) == b"HELLO world"


def test_direct_io_file_mapped_shared_tells_faults_from_reads(server: Server) -> None:
    """With FUSE_DIRECT_IO_ALLOW_MMAP a direct-I/O file maps shared through the page cache,
    and the operation sees which of the two asked; without it the file is simply cached."""
    with _opened(server.mountpoint / "mapped") as fd:
        with mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ) as mapping:
            assert mapping[:4] == b"PPPP"
        expected = b"RRRR" if server.conn["flags"] & abi.DIRECT_IO_ALLOW_MMAP else b"PPPP"
        assert os.pread(fd, 4, 8192) == expected


def test_statfs_and_access(server: Server) -> None:
    st = os.statvfs(server.mountpoint)
    assert (st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree) == (1000, 500, 400, 10, 5)
    assert st.f_namemax == 255
    assert os.access(server.dev, os.R_OK | os.W_OK)
    assert not os.access(server.dev, os.X_OK)


def test_ioctl_iowr_round_trip(server: Server) -> None:
    with _opened(server.dev) as fd:
        assert _ioctl(fd, IOC_ECHO, 41) == (0, 42)


def test_ioctl_error_still_copies_back(server: Server) -> None:
    buf = bytearray(U64.pack(7))
    with _opened(server.dev) as fd, pytest.raises(OSError) as caught:
        fcntl.ioctl(fd, IOC_FAIL, buf, True)
    assert caught.value.errno == errno.EINVAL
    assert U64.unpack(buf)[0] == 8


def test_unknown_ioctl_is_enotty(server: Server) -> None:
    with _opened(server.dev) as fd, pytest.raises(OSError) as caught:
        _ioctl(fd, _iowr(99, 8), 0)
    assert caught.value.errno == errno.ENOTTY


def test_deferred_ioctl_replied_later_from_another_thread(server: Server) -> None:
    with _opened(server.dev) as fd:
        started = time.monotonic()
        assert _ioctl(fd, IOC_SLOW, 1) == (0, 2)
        assert time.monotonic() - started >= 0.19


def test_work_after_a_reply_runs_before_the_worker_reads_again(tmp_path: Path) -> None:
    """The caller is answered before the work runs; the one worker takes its next request only after it."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serving(mountpoint, workers=1) as server, _opened(server.dev) as fd:
        started = time.monotonic()
        assert _ioctl(fd, IOC_AFTER, 0) == (0, 0)
        answered = time.monotonic() - started
        assert answered < AFTER_WORK_S
        assert _ioctl(fd, IOC_AFTER, 0) == (0, 1)
        assert time.monotonic() - started >= AFTER_WORK_S


def test_work_after_a_reply_runs_at_once_outside_a_worker() -> None:
    ran: list[str] = []
    after_reply(lambda: ran.append("work"))
    ran.append("returned")
    assert ran == ["work", "returned"]


def test_deferred_ioctl_interrupted_by_a_signal(server: Server) -> None:
    signals: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: signals.append(signum))
    try:
        with _opened(server.dev) as fd:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            started = time.monotonic()
            with pytest.raises(InterruptedError) as caught:
                _ioctl(fd, IOC_BLOCK, 1)
            assert caught.value.errno == errno.EINTR
            assert time.monotonic() - started < 4
            assert signals == [signal.SIGALRM]
            assert _ioctl(fd, IOC_STATS, 0) == (0, 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_poll_wakes_up_on_notify_poll(server: Server) -> None:
    with _opened(server.dev) as fd:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        started = time.monotonic()
        assert poller.poll(3000) == [(fd, select.POLLIN)]
        assert time.monotonic() - started >= 0.15


def _read_until(fd: int, expected: bytes) -> bytes:
    """Notifications are written by the daemon's notifier thread, shortly after the ioctl returns."""
    deadline = time.monotonic() + 2
    while (data := os.pread(fd, 100, 0)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return data


def test_notify_store_and_inval_inode_reach_the_page_cache(server: Server) -> None:
    with _opened(server.dev) as dev, open(server.mountpoint / "cached", "rb", buffering=0) as cached:
        assert os.pread(cached.fileno(), 100, 0) == ORIGINAL
        assert _ioctl(dev, IOC_STORE, 0) == (0, 1)  # and a worker asking to wait was refused
        assert _read_until(cached.fileno(), STORED) == STORED  # served from the page cache
        assert _ioctl(dev, IOC_INVAL, 5) == (0, 5)  # waited for on a helper thread
        assert os.pread(cached.fileno(), 100, 0) == ORIGINAL  # cache dropped: asked the daemon again


def test_passthrough_open_reads_the_backing_file(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serving(mountpoint, passthrough=True) as s:
        if not s.conn["passthrough"]:
            pytest.skip("the kernel did not grant FUSE_PASSTHROUGH")
        assert s.conn["flags"] & abi.PASSTHROUGH
        with open(mountpoint / "pt", "rb") as f:
            assert f.read() == BACKING


def test_unserved_opcodes_fail_with_enosys(server: Server) -> None:
    with pytest.raises(OSError) as caught:
        os.mkdir(server.mountpoint / "new")
    assert caught.value.errno == errno.ENOSYS
    with pytest.raises(OSError) as caught:  # the kernel remembers ENOSYS and says "not supported"
        os.setxattr(server.dev, "user.x", b"1")
    assert caught.value.errno == errno.EOPNOTSUPP


def test_dead_daemon_gives_enotconn(server: Server) -> None:
    fd = os.open(server.dev, os.O_RDWR)
    try:
        assert _ioctl(fd, IOC_ECHO, 0) == (0, 1)
        server.proc.kill()
        server.proc.join(5)
        with pytest.raises(OSError) as caught:
            _ioctl(fd, IOC_ECHO, 0)
        assert caught.value.errno == errno.ENOTCONN
    finally:
        with contextlib.suppress(OSError):  # FLUSH on close fails with ENOTCONN too; the fd is gone anyway
            os.close(fd)
    assert is_mounted(str(server.mountpoint))  # stale until someone detaches it
    unmount(str(server.mountpoint), lazy=True)
    assert not is_mounted(str(server.mountpoint))


def test_unmount_ends_serve(server: Server) -> None:
    os.listdir(server.mountpoint)
    unmount(str(server.mountpoint))
    server.proc.join(5)
    assert server.proc.exitcode == 0


def test_mount_through_fusermount(tmp_path: Path) -> None:
    with serving(tmp_path, use_fusermount=True) as s:
        assert sorted(os.listdir(s.mountpoint)) == sorted(name.decode() for name in NAMES)
        unmount(str(tmp_path), use_fusermount=True)
        s.proc.join(5)
        assert s.proc.exitcode == 0


def test_mount_errors_say_what_is_wrong(tmp_path: Path, server: Server) -> None:
    with pytest.raises(MountError) as caught:
        mount(str(tmp_path / "missing"))
    assert caught.value.errno == errno.ENOENT and "does not exist" in str(caught.value)

    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(MountError) as caught:
        mount(str(regular))
    assert caught.value.errno == errno.ENOTDIR and "not a directory" in str(caught.value)

    with pytest.raises(MountError) as caught:
        mount(str(server.mountpoint))
    assert caught.value.errno == errno.EBUSY and "already a mount point" in str(caught.value)

    with pytest.raises(MountError) as caught:
        unmount(str(tmp_path))
    assert caught.value.errno == errno.EINVAL and "not a mount point" in str(caught.value)


def _p50_us(fd: int, calls: int) -> float:
    for _ in range(200):
        _ioctl(fd, IOC_ECHO, 0)
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        _ioctl(fd, IOC_ECHO, 0)
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def test_ioctl_latency_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a pass/fail check: prints the echo-ioctl round trip so defaults can be chosen."""
    lines = []
    for workers in (1, 2, 4):
        mountpoint = tmp_path / f"workers{workers}"
        mountpoint.mkdir()
        with serving(mountpoint, workers=workers) as s, _opened(s.dev) as fd:
            lines.append(f"workers={workers}: p50 {_p50_us(fd, 2000):6.1f} us")
    with capsys.disabled():
        print("\nioctl round trip over 2000 calls:\n  " + "\n  ".join(lines))
