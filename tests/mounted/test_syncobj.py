"""Every SYNCOBJ ioctl through a mounted node, with drm_syncobj.c's results, errnos and order of checks.

Raw ioctls on structs from emudev.uapi.defs show exactly what the kernel's uapi gives;
libaccel is used where the test is about something else. Pending fences come from the
mount's sw_sync timelines, imported into syncobjs as sync_files. Other processes are
forked children that talk over unix sockets (fds with SCM_RIGHTS). Where a wait must be
known to be parked in the daemon before the test goes on, the test watches the daemon's
debug files (the waiters of a syncobj in debug/accel0/fences).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from forking import Channel, forked

from emudev.uapi import defs
from userspace.libaccel import Device, SwSyncTimeline, Syncobj, claim_fd
from userspace.libaccel.sync import SyncFile

WAIT_ALL = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
FOR_SUBMIT = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
AVAILABLE = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
DEADLINE = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
SIGNALED = defs.DRM_SYNCOBJ_CREATE_SIGNALED
EXPORT_SYNC_FILE = defs.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
IMPORT_SYNC_FILE = defs.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
LAST_SUBMITTED = defs.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED
NO_INDEX = 0xFFFFFFFF
NO_TIMEOUT = (1 << 63) - 1
NO_FD = 999_999  # a descriptor number nothing has open
MS = 1_000_000


@pytest.fixture(scope="module")
def mount(emudev_shared_mount):
    return emudev_shared_mount


@pytest.fixture
def timeline(mount):
    with SwSyncTimeline(mount.mountpoint) as tl:
        yield tl


@pytest.fixture
def own_dev(emudev_mount):
    """A device of its own, for tests that break the fence-order rules on purpose and check
    that the checker says so."""
    with Device(emudev_mount.node(0)) as d:
        yield d, emudev_mount


# --- raw ioctls ------------------------------------------------------------------------------


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def u32s(values: list[int]) -> ctypes.Array:
    return (ctypes.c_uint32 * max(len(values), 1))(*values)


def u64s(values: list[int]) -> ctypes.Array:
    return (ctypes.c_uint64 * max(len(values), 1))(*values)


def with_size(cmd: int, size: int) -> int:
    """The same request with another _IOC_SIZE: how a binary built against an older header calls."""
    return (cmd & ~(0x3FFF << 16)) | (size << 16)


def ioctl_errno(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno


class Raw:
    """The SYNCOBJ ioctls of one open file, by hand. Arrays live as long as the call."""

    def __init__(self, dev: Device) -> None:
        self.fd = dev.fd

    def call(self, cmd: int, args: Any) -> Any:
        fcntl.ioctl(self.fd, cmd, args, True)
        return args

    def create(self, flags: int = 0) -> int:
        return self.call(defs.DRM_IOCTL_SYNCOBJ_CREATE, defs.drm_syncobj_create(flags=flags)).handle

    def destroy(self, handle: int, pad: int = 0) -> None:
        self.call(defs.DRM_IOCTL_SYNCOBJ_DESTROY, defs.drm_syncobj_destroy(handle=handle, pad=pad))

    def array(self, cmd: int, handles: list[int] | None, count: int | None = None, pad: int = 0) -> None:
        arr = u32s(handles or [])
        self.call(cmd, defs.drm_syncobj_array(handles=ctypes.addressof(arr) if handles is not None else 0,
                                              count_handles=len(handles or []) if count is None else count, pad=pad))

    def reset(self, *handles: int) -> None:
        self.array(defs.DRM_IOCTL_SYNCOBJ_RESET, list(handles))

    def signal(self, *handles: int) -> None:
        self.array(defs.DRM_IOCTL_SYNCOBJ_SIGNAL, list(handles))

    def wait(self, handles: list[int] | None, timeout: int = 0, flags: int = 0, first: int = 0,
             count: int | None = None, deadline: int = 0) -> defs.drm_syncobj_wait:
        arr = u32s(handles or [])
        args = defs.drm_syncobj_wait(handles=ctypes.addressof(arr) if handles is not None else 0, timeout_nsec=timeout,
                                     count_handles=len(handles or []) if count is None else count, flags=flags,
                                     first_signaled=first, deadline_nsec=deadline)
        return self.call(defs.DRM_IOCTL_SYNCOBJ_WAIT, args)

    def timeline_wait(self, handles: list[int], points: list[int] | None, timeout: int = 0, flags: int = 0,
                      first: int = 0, deadline: int = 0) -> defs.drm_syncobj_timeline_wait:
        arr, pts = u32s(handles), u64s(points or [])
        args = defs.drm_syncobj_timeline_wait(handles=ctypes.addressof(arr),
                                              points=ctypes.addressof(pts) if points is not None else 0,
                                              timeout_nsec=timeout, count_handles=len(handles), flags=flags,
                                              first_signaled=first, deadline_nsec=deadline)
        return self.call(defs.DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, args)

    def timeline_signal(self, handles: list[int], points: list[int] | None, flags: int = 0,
                        count: int | None = None) -> None:
        arr, pts = u32s(handles), u64s(points or [])
        self.call(defs.DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, defs.drm_syncobj_timeline_array(
            handles=ctypes.addressof(arr), points=ctypes.addressof(pts) if points is not None else 0,
            count_handles=len(handles) if count is None else count, flags=flags))

    def query(self, handles: list[int], flags: int = 0, count: int | None = None,
              null_points: bool = False) -> list[int]:
        arr, pts = u32s(handles), u64s([0xDEAD] * len(handles))
        self.call(defs.DRM_IOCTL_SYNCOBJ_QUERY, defs.drm_syncobj_timeline_array(
            handles=ctypes.addressof(arr), points=0 if null_points else ctypes.addressof(pts),
            count_handles=len(handles) if count is None else count, flags=flags))
        return list(pts[: len(handles)])

    def transfer(self, src: int, dst: int, src_point: int = 0, dst_point: int = 0, flags: int = 0,
                 pad: int = 0) -> None:
        self.call(defs.DRM_IOCTL_SYNCOBJ_TRANSFER, defs.drm_syncobj_transfer(
            src_handle=src, dst_handle=dst, src_point=src_point, dst_point=dst_point, flags=flags, pad=pad))

    def handle_to_fd(self, handle: int, flags: int = 0, pad: int = 0) -> defs.drm_syncobj_handle:
        return self.call(defs.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD,
                         defs.drm_syncobj_handle(handle=handle, flags=flags, fd=-1, pad=pad))

    def fd_to_handle(self, fd: int, flags: int = 0, handle: int = 0, pad: int = 0) -> int:
        return self.call(defs.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE,
                         defs.drm_syncobj_handle(handle=handle, flags=flags, fd=fd, pad=pad)).handle

    def eventfd(self, handle: int, fd: int, point: int = 0, flags: int = 0, pad: int = 0) -> None:
        self.call(defs.DRM_IOCTL_SYNCOBJ_EVENTFD,
                  defs.drm_syncobj_eventfd(handle=handle, flags=flags, point=point, fd=fd, pad=pad))

    def import_fence(self, handle: int, sync_file: SyncFile, point: int = 0) -> None:
        flags = IMPORT_SYNC_FILE | (defs.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE if point else 0)
        self.call(defs.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE,
                  defs.drm_syncobj_handle(handle=handle, flags=flags, fd=sync_file.fd, point=point))

    def import_point(self, handle: int, timeline: SwSyncTimeline, value: int, point: int = 0) -> None:
        """Put the sw_sync fence `value` of `timeline` into `handle` (at `point`)."""
        with timeline.fence(value) as fence:
            self.import_fence(handle, fence, point)

    def pending(self, timeline: SwSyncTimeline, value: int, point: int = 0) -> int:
        """A new syncobj holding the sw_sync fence `value` of `timeline` (at `point`)."""
        handle = self.create()
        self.import_point(handle, timeline, value, point)
        return handle


# --- what the daemon shows -------------------------------------------------------------------


@dataclass(frozen=True)
class FenceRow:
    file: int
    handle: int
    syncobj: int
    state: str
    point: int
    waiters: int


def fence_rows(mount) -> list[FenceRow]:
    rows = []
    for line in mount.debug("accel0", "fences").splitlines()[1:]:
        file, handle, syncobj, state, point, waiters = line.split()[:6]
        rows.append(FenceRow(int(file), int(handle), int(syncobj), state, int(point), int(waiters)))
    return rows


def file_id(mount, dev: Device, name: str) -> int:
    """The daemon's id of `dev`'s open file, found by naming it."""
    dev.set_client_name(name)
    ids = [int(line.split()[-2]) for line in mount.debug("accel0", "clients").splitlines()[1:]
           if line.split()[-1] == name]
    assert len(ids) == 1, ids
    return ids[0]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.002)


def waiters(mount, file: int, handle: int) -> int:
    return next((r.waiters for r in fence_rows(mount) if (r.file, r.handle) == (file, handle)), -1)


def wait_for_waiters(mount, file: int, handle: int, count: int = 1) -> None:
    """Until `count` waits (or transfers) are parked on the syncobj `handle` of `file`."""
    wait_until(lambda: waiters(mount, file, handle) >= count, f"{count} waiter(s) on syncobj {handle}")


class Background:
    """Run a call on a thread; `outcome()` is its result or the errno it failed with."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._result: Any = None
        self._errno: int | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except OSError as e:
            self._errno = e.errno
        except BaseException as e:
            self._error = e

    def running(self) -> bool:
        return self.thread.is_alive()

    def outcome(self, timeout: float = 5.0) -> tuple[int, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still blocked after {timeout}s"
        if self._error is not None:
            raise self._error
        return (self._errno or 0), self._result


def readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


# --- processes -------------------------------------------------------------------------------


# --- CREATE, DESTROY -------------------------------------------------------------------------


def test_create_flags_and_handles(dev):
    raw = Raw(dev)
    empty, signalled = raw.create(), raw.create(SIGNALED)
    assert (empty, signalled) == (1, 2)
    for flags in (2, SIGNALED | 2, 1 << 31):
        assert ioctl_errno(lambda f=flags: raw.create(f)) == errno.EINVAL
    assert raw.create() == 3, "a failed create took a handle"
    assert raw.wait([signalled]).first_signaled == 0
    assert ioctl_errno(lambda: raw.wait([empty])) == errno.EINVAL


def test_destroy(dev):
    raw = Raw(dev)
    handle = raw.create(SIGNALED)
    assert ioctl_errno(lambda: raw.destroy(handle, pad=1)) == errno.EINVAL
    assert raw.wait([handle]).first_signaled == 0, "a destroy with pad set destroyed"
    raw.destroy(handle)
    for bad in (handle, 0, 0xFFFFFFFF):
        assert ioctl_errno(lambda h=bad: raw.destroy(h)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.destroy(77, pad=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.wait([handle])) == errno.ENOENT
    assert raw.create() == handle, "the lowest free handle comes back"


# --- HANDLE_TO_FD, FD_TO_HANDLE --------------------------------------------------------------


def test_handle_to_fd_errors_in_the_kernels_order(dev):
    raw = Raw(dev)
    empty, signalled = raw.create(), raw.create(SIGNALED)
    assert ioctl_errno(lambda: raw.handle_to_fd(signalled, pad=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.handle_to_fd(signalled, EXPORT_SYNC_FILE, pad=1)) == errno.EINVAL
    for flags in (4, 1 << 31, EXPORT_SYNC_FILE | 4):
        assert ioctl_errno(lambda f=flags: raw.handle_to_fd(signalled, f)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.handle_to_fd(77)) == errno.EINVAL, "opaque export of a bad handle"
    assert ioctl_errno(lambda: raw.handle_to_fd(0)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.handle_to_fd(77, EXPORT_SYNC_FILE)) == errno.ENOENT
    assert ioctl_errno(lambda: raw.handle_to_fd(empty, EXPORT_SYNC_FILE)) == errno.EINVAL, "no fence to export"
    # pad and flags are looked at before the handle
    assert ioctl_errno(lambda: raw.handle_to_fd(77, EXPORT_SYNC_FILE, pad=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.handle_to_fd(77, EXPORT_SYNC_FILE | 4)) == errno.EINVAL


def test_fd_to_handle_errors_in_the_kernels_order(dev, timeline):
    raw = Raw(dev)
    signalled = raw.create(SIGNALED)
    with timeline.fence(1) as sync_file, open(os.devnull) as null:
        opaque = Syncobj(dev, signalled).export()
        try:
            assert ioctl_errno(lambda: raw.fd_to_handle(opaque, pad=1)) == errno.EINVAL
            for flags in (4, 1 << 31, IMPORT_SYNC_FILE | 4):
                assert ioctl_errno(lambda f=flags: raw.fd_to_handle(opaque, f)) == errno.EINVAL
            # an opaque import of anything but a syncobj file, or of no file at all: EINVAL
            for fd in (null.fileno(), sync_file.fd, dev.fd, NO_FD, -1):
                assert ioctl_errno(lambda f=fd: raw.fd_to_handle(f)) == errno.EINVAL, fd
            # a sync_file import: the file is looked at before the handle
            for fd in (null.fileno(), opaque, NO_FD):
                assert ioctl_errno(lambda f=fd: raw.fd_to_handle(f, IMPORT_SYNC_FILE, signalled)) == errno.EINVAL
                assert ioctl_errno(lambda f=fd: raw.fd_to_handle(f, IMPORT_SYNC_FILE, 77)) == errno.EINVAL
            assert ioctl_errno(lambda: raw.fd_to_handle(sync_file.fd, IMPORT_SYNC_FILE, 77)) == errno.ENOENT
            assert raw.wait([signalled]).first_signaled == 0, "a failed import changed the fence"
        finally:
            os.close(opaque)


def test_an_opaque_fd_gives_a_new_handle_to_the_same_syncobj_on_every_import(mount, dev):
    raw = Raw(dev)
    original = raw.create()
    opaque = Syncobj(dev, original).export()
    try:
        first, second = raw.fd_to_handle(opaque), raw.fd_to_handle(opaque)
        assert len({original, first, second}) == 3
        me = file_id(mount, dev, "opaque-import")
        rows = {r.handle: r.syncobj for r in fence_rows(mount) if r.file == me}
        assert rows[original] == rows[first] == rows[second]

        raw.signal(first)
        assert raw.wait([original, second], flags=WAIT_ALL).first_signaled == 0
        raw.reset(second)
        assert ioctl_errno(lambda: raw.wait([original])) == errno.EINVAL
        raw.destroy(original)
        raw.signal(second)
        assert raw.wait([first]).first_signaled == 0, "the syncobj went with one of its handles"
        with Device(mount.node(0)) as other:
            Raw(other).reset(Raw(other).fd_to_handle(opaque))
        assert ioctl_errno(lambda: raw.wait([first])) == errno.EINVAL
    finally:
        os.close(opaque)


def test_handle_ioctls_take_both_struct_sizes(dev):
    """The 16-byte drm_syncobj_handle of headers before the point field, and the 24-byte one."""
    raw = Raw(dev)
    signalled = raw.create(SIGNALED)
    to_fd16 = with_size(defs.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, 16)
    from_fd16 = with_size(defs.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, 16)
    assert (to_fd16, from_fd16) == (0xC01064C1, 0xC01064C2)
    assert (defs.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, defs.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE) == (0xC01864C1, 0xC01864C2)

    def short(**fields: int) -> bytearray:
        return bytearray(bytes(defs.drm_syncobj_handle(**fields))[:16])

    out = short(handle=signalled, fd=-1)
    fcntl.ioctl(dev.fd, to_fd16, out, True)
    opaque = claim_fd(dev.fd, int.from_bytes(out[8:12], "little", signed=True), defs.DRM_CLOEXEC | defs.DRM_RDWR)
    try:
        back = short(fd=opaque)
        fcntl.ioctl(dev.fd, from_fd16, back, True)
        imported = int.from_bytes(back[0:4], "little")
        assert imported not in (0, signalled)
        assert raw.wait([imported]).first_signaled == 0
    finally:
        os.close(opaque)

    out = short(handle=signalled, flags=EXPORT_SYNC_FILE, fd=-1)
    fcntl.ioctl(dev.fd, to_fd16, out, True)
    with SyncFile(claim_fd(dev.fd, int.from_bytes(out[8:12], "little", signed=True), defs.DRM_CLOEXEC)) as sf:
        assert sf.info()[1] == 1

    empty = raw.create()
    with Syncobj(dev, signalled).export_sync_file() as sf:
        into = short(handle=empty, flags=IMPORT_SYNC_FILE, fd=sf.fd)
        fcntl.ioctl(dev.fd, from_fd16, into, True)
    assert raw.wait([empty]).first_signaled == 0


# --- WAIT ------------------------------------------------------------------------------------


def test_wait_struct_sizes_flags_count_and_lookup(dev):
    raw = Raw(dev)
    signalled, empty = raw.create(SIGNALED), raw.create()
    wait32 = with_size(defs.DRM_IOCTL_SYNCOBJ_WAIT, 32)
    assert (wait32, defs.DRM_IOCTL_SYNCOBJ_WAIT) == (0xC02064C3, 0xC02864C3)
    arr = u32s([empty, signalled])
    old = bytearray(bytes(defs.drm_syncobj_wait(handles=ctypes.addressof(arr), count_handles=1,
                                                first_signaled=9))[:32])
    assert ioctl_errno(lambda: fcntl.ioctl(dev.fd, wait32, old, True)) == errno.EINVAL  # entry 0 is empty
    old[0:8] = (ctypes.addressof(arr) + 4).to_bytes(8, "little")
    fcntl.ioctl(dev.fd, wait32, old, True)
    assert int.from_bytes(old[24:28], "little") == 0

    for flags in (AVAILABLE, 1 << 4, 1 << 31):
        assert ioctl_errno(lambda f=flags: raw.wait([signalled], flags=f)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.wait([77], flags=AVAILABLE)) == errno.EINVAL, "flags come before the lookup"
    assert raw.wait(None, count=0, first=7).first_signaled == 7, "count 0 returns 0 and looks at nothing"
    assert ioctl_errno(lambda: raw.wait(None, count=1)) == errno.EFAULT
    # every handle is looked up before any entry is looked at, and before any waiting
    start = time.monotonic()
    assert ioctl_errno(lambda: raw.wait([empty, 77], timeout=now_ns() + 5000 * MS)) == errno.ENOENT
    assert ioctl_errno(lambda: raw.wait([signalled, 77], timeout=NO_TIMEOUT, flags=WAIT_ALL)) == errno.ENOENT
    assert time.monotonic() - start < 1.0


def test_an_empty_syncobj_fails_a_wait_at_once_without_wait_for_submit(dev):
    raw = Raw(dev)
    signalled, empty = raw.create(SIGNALED), raw.create()
    start = time.monotonic()
    assert ioctl_errno(lambda: raw.wait([empty], timeout=now_ns() + 5000 * MS)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.wait([signalled, empty], timeout=NO_TIMEOUT)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.wait([empty, signalled], timeout=NO_TIMEOUT)) == errno.EINVAL
    assert time.monotonic() - start < 1.0
    assert ioctl_errno(lambda: raw.wait([empty], flags=FOR_SUBMIT)) == errno.ETIME
    assert raw.wait([empty, signalled], flags=FOR_SUBMIT).first_signaled == 1


def test_wait_for_submit_waits_for_a_fence_from_another_process(mount, dev):
    raw = Raw(dev)
    mine = raw.create()
    me = file_id(mount, dev, "submit-waiter")
    opaque = Syncobj(dev, mine).export()

    def submitter(chan: Channel) -> None:
        _, (fd,) = chan.recv()
        with Device(mount.node(0)) as other, SwSyncTimeline(mount.mountpoint) as tl:
            theirs = Raw(other).fd_to_handle(fd)
            chan.send("ready")
            chan.recv()
            with tl.fence(1) as fence:
                Raw(other).import_fence(theirs, fence)
            chan.send("submitted")
            chan.recv()
            tl.inc()
            chan.send("signalled")
            chan.recv()

    try:
        with forked(submitter) as child:
            child.chan.send(None, fds=[opaque])
            assert child.chan.recv()[0] == "ready"
            assert ioctl_errno(lambda: raw.wait([mine], timeout=NO_TIMEOUT)) == errno.EINVAL
            waiting = Background(lambda: raw.wait([mine], timeout=now_ns() + 10_000 * MS, flags=FOR_SUBMIT))
            wait_for_waiters(mount, me, mine)
            child.chan.send("submit")
            assert child.chan.recv()[0] == "submitted"
            waiting.thread.join(0.2)
            assert waiting.running(), "returned once a fence was submitted, before it signalled"
            child.chan.send("signal")
            assert child.chan.recv()[0] == "signalled"
            result, args = waiting.outcome()
            assert result == 0 and args.first_signaled == 0
            child.chan.send("bye")
            child.join()
    finally:
        os.close(opaque)


def test_wait_all_or_any_and_first_signaled(mount, dev, timeline):
    raw = Raw(dev)
    s1, s2 = raw.create(SIGNALED), raw.create(SIGNALED)
    pending = raw.pending(timeline, 1)
    assert raw.wait([s1, pending]).first_signaled == 0
    assert raw.wait([pending, s1]).first_signaled == 1
    assert raw.wait([pending, s1, s2]).first_signaled == 1, "the lowest index done on entry"
    assert raw.wait([s1, s2], flags=WAIT_ALL).first_signaled == 0
    assert ioctl_errno(lambda: raw.wait([s1, pending], flags=WAIT_ALL)) == errno.ETIME
    assert ioctl_errno(lambda: raw.wait([pending])) == errno.ETIME

    me = file_id(mount, dev, "first-signaled")
    deadline = now_ns() + 10_000 * MS
    # nothing done on entry: any entry done after waking gives its index ...
    a, b = raw.create(), raw.create()
    waiting = Background(lambda: raw.wait([a, b], timeout=deadline, flags=FOR_SUBMIT, first=5))
    wait_for_waiters(mount, me, b)
    raw.signal(b)
    result, args = waiting.outcome()
    assert (result, args.first_signaled) == (0, 1)
    # ... but under WAIT_ALL first_signaled says which was done on entry, here none
    c, d = raw.create(), raw.create()
    waiting = Background(lambda: raw.wait([c, d], timeout=deadline, flags=FOR_SUBMIT | WAIT_ALL, first=5))
    wait_for_waiters(mount, me, d)
    raw.signal(d)
    waiting.thread.join(0.1)
    assert waiting.running(), "WAIT_ALL returned with one of two signalled"
    raw.signal(c)
    result, args = waiting.outcome()
    assert (result, args.first_signaled) == (0, NO_INDEX)
    e = raw.create()
    waiting = Background(lambda: raw.wait([e, s1], timeout=deadline, flags=FOR_SUBMIT | WAIT_ALL, first=5))
    wait_for_waiters(mount, me, e)
    raw.signal(e)
    result, args = waiting.outcome()
    assert (result, args.first_signaled) == (0, 1)


def test_timeouts_are_absolute(dev, timeline):
    raw = Raw(dev)
    pending = raw.pending(timeline, 1)
    for timeout in (0, 1, -1, now_ns() - 1000 * MS):
        start = now_ns()
        assert ioctl_errno(lambda t=timeout: raw.wait([pending], timeout=t)) == errno.ETIME
        assert now_ns() - start < 200 * MS, f"timeout {timeout} is a poll"
    deadline = now_ns() + 300 * MS
    assert ioctl_errno(lambda: raw.wait([pending], timeout=deadline)) == errno.ETIME
    late = now_ns() - deadline
    assert 0 <= late < 250 * MS, f"ETIME {late / MS:.1f} ms after the deadline"
    deadline = now_ns() + 200 * MS
    assert ioctl_errno(lambda: raw.timeline_wait([pending], [0], timeout=deadline)) == errno.ETIME
    assert 0 <= now_ns() - deadline < 250 * MS


def test_a_wait_succeeds_on_a_fence_signalled_with_an_error(mount, dev):
    raw = Raw(dev)
    failed = raw.create()
    me = file_id(mount, dev, "error-waiter")
    waiting = Background(lambda: raw.wait([failed], timeout=now_ns() + 10_000 * MS, flags=FOR_SUBMIT))
    wait_for_waiters(mount, me, failed)
    with SwSyncTimeline(mount.mountpoint) as tl:
        raw.import_point(failed, tl, 1)
        waiting.thread.join(0.05)
        assert waiting.running()
    # closing the timeline signalled its fence with -ENOENT
    result, args = waiting.outcome()
    assert (result, args.first_signaled) == (0, 0)
    assert raw.wait([failed]).first_signaled == 0
    Syncobj(dev, failed).wait(timeout_ns=0)
    with Syncobj(dev, failed).export_sync_file() as sf:
        assert sf.info()[1] == -errno.ENOENT


# --- RESET, SIGNAL ---------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [defs.DRM_IOCTL_SYNCOBJ_RESET, defs.DRM_IOCTL_SYNCOBJ_SIGNAL],
                         ids=["reset", "signal"])
def test_reset_and_signal_errors(dev, timeline, cmd):
    raw = Raw(dev)
    pending = raw.pending(timeline, 1)
    assert ioctl_errno(lambda: raw.array(cmd, [pending], pad=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.array(cmd, [pending], count=0)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.array(cmd, None, count=0)) == errno.EINVAL, "count is looked at first"
    assert ioctl_errno(lambda: raw.array(cmd, None, count=1)) == errno.EFAULT
    assert ioctl_errno(lambda: raw.array(cmd, [77])) == errno.ENOENT
    assert ioctl_errno(lambda: raw.array(cmd, [pending, 77])) == errno.ENOENT
    assert ioctl_errno(lambda: raw.wait([pending])) == errno.ETIME, "a failed call changed a syncobj"


def test_reset_empties_and_signal_signals(dev, timeline):
    raw = Raw(dev)
    a, b = raw.pending(timeline, 1), raw.pending(timeline, 2)
    raw.signal(a, b)
    assert raw.wait([a, b], flags=WAIT_ALL).first_signaled == 0
    raw.reset(a)
    assert ioctl_errno(lambda: raw.wait([a])) == errno.EINVAL
    assert raw.wait([b]).first_signaled == 0
    raw.reset(a, b)
    assert ioctl_errno(lambda: raw.wait([a, b], flags=FOR_SUBMIT)) == errno.ETIME


# --- TIMELINE_WAIT, TIMELINE_SIGNAL, QUERY ---------------------------------------------------


def test_timeline_wait(mount, dev, timeline):
    raw = Raw(dev)
    t = raw.create()
    raw.timeline_signal([t], [1])
    raw.timeline_signal([t], [2])
    raw.import_point(t, timeline, 1, point=3)
    assert raw.timeline_wait([t], [2]).first_signaled == 0
    assert raw.timeline_wait([t], [1]).first_signaled == 0
    assert ioctl_errno(lambda: raw.timeline_wait([t], [3])) == errno.ETIME
    assert raw.timeline_wait([t], [3], flags=AVAILABLE).first_signaled == 0, "submitted is available"
    assert ioctl_errno(lambda: raw.timeline_wait([t], [4], timeout=NO_TIMEOUT)) == errno.EINVAL, "not submitted"
    assert ioctl_errno(lambda: raw.timeline_wait([t], [4], flags=FOR_SUBMIT)) == errno.ETIME
    assert ioctl_errno(lambda: raw.timeline_wait([t], [4], flags=AVAILABLE)) == errno.ETIME
    assert ioctl_errno(lambda: raw.timeline_wait([t], [2], flags=1 << 4)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.timeline_wait([t], None)) == errno.ETIME, "no points: point 0, the head"
    signalled = raw.create(SIGNALED)
    assert raw.timeline_wait([t, signalled], None).first_signaled == 1

    old = with_size(defs.DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, 40)
    assert (old, defs.DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT) == (0xC02864CA, 0xC03064CA)
    arr, pts = u32s([t]), u64s([2])
    short = bytearray(bytes(defs.drm_syncobj_timeline_wait(handles=ctypes.addressof(arr),
                                                           points=ctypes.addressof(pts), count_handles=1,
                                                           first_signaled=9))[:40])
    fcntl.ioctl(dev.fd, old, short, True)
    assert int.from_bytes(short[32:36], "little") == 0

    # a point signals once every point before it has: point 5 waits for the pending point 3
    raw.timeline_signal([t], [5])
    assert ioctl_errno(lambda: raw.timeline_wait([t], [5])) == errno.ETIME
    assert raw.timeline_wait([t], [5], flags=AVAILABLE).first_signaled == 0

    u = raw.create()
    me = file_id(mount, dev, "timeline-wait")
    deadline = now_ns() + 10_000 * MS
    waiting = Background(lambda: raw.timeline_wait([u], [5], timeout=deadline, flags=FOR_SUBMIT))
    wait_for_waiters(mount, me, u)
    raw.timeline_signal([u], [4])
    waiting.thread.join(0.1)
    assert waiting.running(), "returned for point 4"
    raw.timeline_signal([u], [5])
    assert waiting.outcome()[0] == 0
    waiting = Background(lambda: raw.timeline_wait([u], [6], timeout=deadline, flags=FOR_SUBMIT | AVAILABLE))
    wait_for_waiters(mount, me, u)
    raw.import_point(u, timeline, 2, point=6)
    assert waiting.outcome()[0] == 0, "WAIT_AVAILABLE returns once the point has a fence"
    assert ioctl_errno(lambda: raw.timeline_wait([u], [6])) == errno.ETIME


@pytest.mark.emudev(violations_expected=True)
def test_timeline_points_are_64_bit(own_dev):
    dev, mount = own_dev
    raw = Raw(dev)
    t = raw.create()
    big = (1 << 32) + 1
    raw.timeline_signal([t], [big])
    assert raw.query([t]) == [big] and raw.query([t], LAST_SUBMITTED) == [big]
    for point in (1, 2, 1 << 32, big):
        assert raw.timeline_wait([t], [point]).first_signaled == 0, point
    assert ioctl_errno(lambda: raw.timeline_wait([t], [big + 1])) == errno.EINVAL
    raw.timeline_signal([t], [2])  # before 2**32 + 1: out of order, not a point after 1
    assert raw.query([t], LAST_SUBMITTED) == [big]
    assert ioctl_errno(lambda: raw.timeline_wait([t], [big + 1])) == errno.EINVAL
    assert "timeline point 2 added to syncobj" in mount.violations()


def test_timeline_signal(dev):
    raw = Raw(dev)
    a, b = raw.create(), raw.create()
    assert ioctl_errno(lambda: raw.timeline_signal([a], [1], flags=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.timeline_signal([a], [1], count=0)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.timeline_signal([77], [1])) == errno.ENOENT
    assert ioctl_errno(lambda: raw.timeline_signal([a, 77], [1, 1])) == errno.ENOENT
    assert raw.query([a], LAST_SUBMITTED) == [0], "a failed call signalled a point"
    raw.timeline_signal([a, b], [3, 4])
    assert raw.query([a, b]) == [3, 4]
    # point 0 signals a syncobj for binary and timeline waits alike (igt signal-point-0)
    c, d = raw.create(), raw.create()
    raw.timeline_signal([c], [0])
    raw.timeline_signal([d], None)
    assert raw.wait([c, d], flags=WAIT_ALL | FOR_SUBMIT).first_signaled == 0
    assert raw.timeline_wait([c, d], [0, 0], flags=WAIT_ALL).first_signaled == 0
    assert raw.query([c, d], LAST_SUBMITTED) == [0, 0]


@pytest.mark.emudev(violations_expected=True)
def test_query(own_dev):
    dev, mount = own_dev
    with SwSyncTimeline(mount.mountpoint) as timeline:
        _query(dev, timeline)
    assert "went back from point 2 to 0" in mount.violations()


def _query(dev, timeline):
    raw = Raw(dev)
    empty, binary, t = raw.create(), raw.create(SIGNALED), raw.create()
    assert ioctl_errno(lambda: raw.query([t], flags=2)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.query([t], count=0)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.query([t, 77])) == errno.ENOENT
    assert ioctl_errno(lambda: raw.query([t], null_points=True)) == errno.EFAULT
    assert raw.query([empty, binary]) == raw.query([empty, binary], LAST_SUBMITTED) == [0, 0]

    raw.timeline_signal([t], [1])
    raw.timeline_signal([t], [2])
    raw.import_point(t, timeline, 1, point=3)
    assert raw.query([t]) == [2]
    assert raw.query([t], LAST_SUBMITTED) == [3]
    # an out-of-order point starts a new fence context whose seqno is max(3, 1); the walk
    # stops at the context change, so the last signalled point reads lower, as the kernel's does
    raw.timeline_signal([t], [1])
    assert raw.query([t], LAST_SUBMITTED) == [3]
    assert raw.query([t]) == [0]
    timeline.inc()
    assert raw.query([t]) == [3]


# --- TRANSFER --------------------------------------------------------------------------------


def test_transfer_errors(dev):
    raw = Raw(dev)
    src, dst, empty = raw.create(SIGNALED), raw.create(), raw.create()
    assert ioctl_errno(lambda: raw.transfer(src, dst, pad=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.transfer(src, 77)) == errno.ENOENT
    assert ioctl_errno(lambda: raw.transfer(77, dst)) == errno.ENOENT
    assert ioctl_errno(lambda: raw.transfer(empty, dst)) == errno.EINVAL, "no fence at the source"
    assert ioctl_errno(lambda: raw.transfer(src, dst, src_point=1)) == errno.EINVAL, "a binary fence has no point 1"
    raw.timeline_signal([src], [4])
    assert ioctl_errno(lambda: raw.transfer(src, dst, src_point=5, dst_point=1)) == errno.EINVAL
    assert ioctl_errno(lambda: raw.wait([dst])) == errno.EINVAL, "a failed transfer changed the destination"
    raw.transfer(src, dst, src_point=4, flags=0x80 | WAIT_ALL)  # flags: only WAIT_FOR_SUBMIT means anything
    assert raw.wait([dst]).first_signaled == 0


def test_transfer_between_binary_and_timeline(dev, timeline):
    raw = Raw(dev)
    binary, t = raw.create(SIGNALED), raw.create()
    raw.transfer(binary, t, dst_point=5)
    assert raw.query([t]) == [5]
    assert raw.timeline_wait([t], [5]).first_signaled == 0
    pending = raw.pending(timeline, 1)
    raw.transfer(pending, t, dst_point=6)
    assert raw.query([t]) == [5] and raw.query([t], LAST_SUBMITTED) == [6]
    assert ioctl_errno(lambda: raw.timeline_wait([t], [6])) == errno.ETIME

    back = raw.create()
    raw.transfer(t, back, src_point=6)
    assert ioctl_errno(lambda: raw.wait([back])) == errno.ETIME
    assert raw.query([back], LAST_SUBMITTED) == [6], "the binary syncobj holds the point's chain node"
    early = raw.create()
    raw.transfer(t, early, src_point=5)
    assert raw.wait([early]).first_signaled == 0
    other = raw.create()
    raw.transfer(t, other, src_point=6, dst_point=1)
    timeline.inc()
    assert raw.wait([back, t]).first_signaled == 0
    assert raw.timeline_wait([t, other], [6, 1], flags=WAIT_ALL).first_signaled == 0
    assert raw.query([t, other]) == [6, 1]


def test_transfer_with_wait_for_submit_waits_for_the_source_point(mount, dev):
    raw = Raw(dev)
    src, dst = raw.create(), raw.create()
    me = file_id(mount, dev, "transfer-waiter")
    moving = Background(lambda: raw.transfer(src, dst, src_point=2, dst_point=1, flags=FOR_SUBMIT))
    wait_for_waiters(mount, me, src)
    assert raw.query([dst], LAST_SUBMITTED) == [0]
    raw.timeline_signal([src], [1])
    moving.thread.join(0.1)
    assert moving.running(), "point 1 is not point 2"
    raw.timeline_signal([src], [2])
    assert moving.outcome()[0] == 0
    assert raw.query([dst]) == [1]


# --- EVENTFD ---------------------------------------------------------------------------------


@contextmanager
def an_eventfd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def count(fd: int) -> int:
    """Read (and reset) the eventfd's counter; 0 if it is zero."""
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


def test_eventfd_errors_in_the_kernels_order(dev):
    raw = Raw(dev)
    s = raw.create(SIGNALED)
    with an_eventfd() as efd, open(os.devnull) as null:
        for flags in (WAIT_ALL, FOR_SUBMIT, 1 << 31):
            assert ioctl_errno(lambda f=flags: raw.eventfd(s, efd, flags=f)) == errno.EINVAL
        assert ioctl_errno(lambda: raw.eventfd(s, efd, pad=1)) == errno.EINVAL
        assert ioctl_errno(lambda: raw.eventfd(77, efd)) == errno.ENOENT
        assert ioctl_errno(lambda: raw.eventfd(s, null.fileno())) == errno.EINVAL, "not an eventfd"
        assert ioctl_errno(lambda: raw.eventfd(s, dev.fd)) == errno.EINVAL
        for fd in (NO_FD, -1):
            assert ioctl_errno(lambda f=fd: raw.eventfd(s, f)) == errno.EBADF
        assert ioctl_errno(lambda: raw.eventfd(77, efd, flags=1 << 31)) == errno.EINVAL, "flags first"
        assert ioctl_errno(lambda: raw.eventfd(77, NO_FD)) == errno.ENOENT, "the handle before the fd"
        assert count(efd) == 0


def test_eventfd_counts_when_the_point_signals(dev, timeline):
    raw = Raw(dev)
    t = raw.create()
    with an_eventfd() as efd:
        raw.eventfd(t, efd, point=2)
        raw.timeline_signal([t], [1])
        raw.import_point(t, timeline, 1, point=2)
        assert not readable(efd, 0), "counted before point 2 signalled"
        timeline.inc()
        assert readable(efd, 5.0)
        assert count(efd) == 1
        raw.timeline_signal([t], [3])
        assert count(efd) == 0, "an eventfd registration counts once"


def test_eventfd_with_wait_available_counts_when_the_point_has_a_fence(dev, timeline):
    raw = Raw(dev)
    t = raw.create()
    with an_eventfd() as efd:
        raw.eventfd(t, efd, point=3, flags=AVAILABLE)
        raw.timeline_signal([t], [2])
        assert not readable(efd, 0)
        raw.import_point(t, timeline, 1, point=3)
        assert readable(efd, 5.0) and count(efd) == 1
        assert ioctl_errno(lambda: raw.timeline_wait([t], [3])) == errno.ETIME, "the point is still pending"


def test_eventfd_counts_at_once_when_already_signalled(dev):
    raw = Raw(dev)
    binary, t = raw.create(SIGNALED), raw.create()
    raw.timeline_signal([t], [4])
    with an_eventfd() as efd:
        raw.eventfd(binary, efd)
        assert readable(efd, 5.0) and count(efd) == 1
        raw.eventfd(t, efd, point=2)  # signalled and collected long ago
        assert readable(efd, 5.0) and count(efd) == 1
        raw.eventfd(t, efd, point=4, flags=AVAILABLE)
        raw.eventfd(t, efd, point=4)
        assert readable(efd, 5.0) and count(efd) == 2


# --- sharing, interruption, deadlines, unplug ------------------------------------------------


def test_an_opaque_syncobj_fd_sent_to_another_process_is_the_same_syncobj(mount, dev):
    raw = Raw(dev)
    mine = raw.create()
    opaque = Syncobj(dev, mine).export()

    def other_process(chan: Channel) -> None:
        _, (fd,) = chan.recv()
        with Device(mount.node(0)) as other:
            theirs = Raw(other)
            handle = theirs.fd_to_handle(fd)
            os.close(fd)
            chan.send("imported")
            args = theirs.wait([handle], timeout=now_ns() + 10_000 * MS, flags=FOR_SUBMIT)
            chan.send(args.first_signaled)
            chan.recv()
            theirs.reset(handle)
            chan.send("reset")
            chan.recv()

    try:
        with forked(other_process) as child:
            child.chan.send(None, fds=[opaque])
            assert child.chan.recv()[0] == "imported"
            raw.signal(mine)
            assert child.chan.recv()[0] == 0, "the other process's wait did not end with 0"
            child.chan.send("reset it")
            assert child.chan.recv()[0] == "reset"
            assert ioctl_errno(lambda: raw.wait([mine])) == errno.EINVAL, "its reset did not reach this handle"
            child.chan.send("bye")
            child.join()
    finally:
        os.close(opaque)


def test_an_interrupted_wait_restarts_with_its_absolute_deadline(mount):
    """SIGUSR1 every 50 ms at two processes waiting 1.5 s on a fence that never signals: the
    libaccel wait restarts after each EINTR and ends with ETIME at its deadline; a raw
    fcntl.ioctl wait shows the EINTRs. (The two set up one after the other: imports at the
    same time can deadlock the daemon, see test_imports_at_the_same_time_do_not_deadlock_the_daemon.)"""
    wait_for = 1.5

    def waiter(raw_ioctl: bool) -> Callable[[Channel], None]:
        def body(chan: Channel) -> None:
            signal.signal(signal.SIGUSR1, lambda *_: None)
            chan.recv()
            with Device(mount.node(0)) as d, SwSyncTimeline(mount.mountpoint) as tl:
                handle = Raw(d).pending(tl, 1)
                chan.send("ready")
                chan.recv()
                deadline = now_ns() + int(wait_for * 1e9)
                interrupted, outcome = 0, 0
                if raw_ioctl:
                    while True:
                        try:
                            Raw(d).wait([handle], timeout=deadline)
                            break
                        except InterruptedError:
                            interrupted += 1
                        except OSError as e:
                            outcome = e.errno
                            break
                else:
                    try:
                        Syncobj(d, handle).wait(timeout_ns=deadline)
                    except OSError as e:
                        outcome = e.errno
                chan.send((outcome, now_ns() - deadline, interrupted))
                chan.recv()
        return body

    with forked(waiter(raw_ioctl=False)) as lib, forked(waiter(raw_ioctl=True)) as raw:
        children = {lib.pid: lib, raw.pid: raw}
        for child in children.values():
            child.chan.send("set up")
            assert child.chan.recv()[0] == "ready"
        for child in children.values():
            child.chan.send("go")
        results: dict[int, tuple[int, int, int]] = {}
        give_up = time.monotonic() + wait_for + 5.0
        while len(results) < len(children) and time.monotonic() < give_up:
            for pid in set(children) - set(results):
                os.kill(pid, signal.SIGUSR1)
            ready, _, _ = select.select([c.chan.sock for pid, c in children.items() if pid not in results], [], [],
                                        0.05)
            for pid, child in children.items():
                if child.chan.sock in ready:
                    results[pid] = child.chan.recv()[0]
        assert len(results) == 2, "a waiter never came back"
        for child in children.values():
            child.chan.send("bye")
            child.join()
    outcome, late, _ = results[lib.pid]
    assert outcome == errno.ETIME
    assert 0 <= late < 300 * MS, f"ETIME {late / MS:.0f} ms after the deadline"
    outcome, late, interrupted = results[raw.pid]
    assert outcome == errno.ETIME and 0 <= late < 300 * MS
    assert interrupted >= 1, "the raw ioctl never returned EINTR"


def get_deadline(timeline: SwSyncTimeline, fence: SyncFile) -> int:
    args = defs.sw_sync_get_deadline(fence_fd=fence.fd)
    fcntl.ioctl(timeline.fd, defs.SW_SYNC_GET_DEADLINE, args, True)
    return args.deadline_ns


def test_wait_deadline_reaches_the_fence(dev, timeline):
    raw = Raw(dev)
    handle = raw.create()
    with timeline.fence(1) as fence:
        raw.import_fence(handle, fence)
        assert ioctl_errno(lambda: get_deadline(timeline, fence)) == errno.ENOENT, "no deadline yet"
        hint = now_ns() + 60_000 * MS
        assert ioctl_errno(lambda: raw.wait([handle], timeout=now_ns() + 20 * MS, flags=DEADLINE,
                                            deadline=hint)) == errno.ETIME
        assert get_deadline(timeline, fence) == hint
        raw.timeline_wait([handle], [0], timeout=now_ns() + 20 * MS, flags=DEADLINE | AVAILABLE, deadline=1)
        assert get_deadline(timeline, fence) == hint, "WAIT_AVAILABLE is done on entry, before any hint"
        assert ioctl_errno(lambda: raw.wait([handle], timeout=now_ns() + 20 * MS, flags=DEADLINE,
                                            deadline=hint + 1000)) == errno.ETIME
        assert get_deadline(timeline, fence) == hint, "the earliest deadline stays"
        assert ioctl_errno(lambda: raw.wait([handle], timeout=now_ns() + 20 * MS,
                                            deadline=hint - 1000)) == errno.ETIME
        assert get_deadline(timeline, fence) == hint, "a deadline without WAIT_DEADLINE was set"
        assert ioctl_errno(lambda: raw.timeline_wait([handle], [0], timeout=now_ns() + 20 * MS, flags=DEADLINE,
                                                     deadline=hint - 1000)) == errno.ETIME
        assert get_deadline(timeline, fence) == hint - 1000


def test_a_polling_wait_sets_its_deadline_too(dev, timeline):
    raw = Raw(dev)
    handle = raw.create()
    with timeline.fence(1) as fence:
        raw.import_fence(handle, fence)
        hint = now_ns() + 60_000 * MS
        assert ioctl_errno(lambda: raw.wait([handle], timeout=0, flags=DEADLINE, deadline=hint)) == errno.ETIME
        assert get_deadline(timeline, fence) == hint


def test_a_wait_deadline_on_a_timeline_point_reaches_the_fence_behind_it(dev, timeline):
    raw = Raw(dev)
    t = raw.create()
    raw.timeline_signal([t], [1])
    with timeline.fence(1) as fence:
        raw.import_fence(t, fence, point=2)
        hint = now_ns() + 60_000 * MS
        assert ioctl_errno(lambda: raw.timeline_wait([t], [2], timeout=now_ns() + 20 * MS, flags=DEADLINE,
                                                     deadline=hint)) == errno.ETIME
        assert get_deadline(timeline, fence) == hint


@pytest.mark.emudev(devices=1, violations_expected=True)
def test_unplug_ends_a_blocked_wait_with_enodev(emudev_mount):
    """The child's wait can never be satisfied, which the deadlock detector reports; unplug ends it."""
    m = emudev_mount

    def blocked(chan: Channel) -> None:
        with Device(m.node(0)) as d:
            handle = Raw(d).create()
            chan.send("ready")
            try:
                Raw(d).wait([handle], timeout=NO_TIMEOUT, flags=FOR_SUBMIT)
                outcome = 0
            except OSError as e:
                outcome = e.errno
            chan.send((outcome, time.monotonic()))

    with forked(blocked) as child:
        assert child.chan.recv()[0] == "ready"
        wait_until(lambda: any(r.waiters for r in fence_rows(m)), "the wait is parked in the daemon")
        unplugged = time.monotonic()
        m.proc.send_signal(signal.SIGTERM)
        (outcome, returned), _ = child.chan.recv()
        assert outcome == errno.ENODEV
        assert returned - unplugged < 2.0
        child.join()
    assert "waits with WAIT_FOR_SUBMIT for syncobjs [1] that only it holds" in m.violations()
    m.proc.wait(10.0)  # the daemon exits once its last client is gone


def fuse_connection(mountpoint: str) -> int | None:
    """The fusectl connection of a mount: the minor number of its device (/proc/self/mountinfo)."""
    real = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                return int(fields[2].split(":")[1])
    return None


@pytest.mark.parametrize("workers, clients", [
    pytest.param(1, 1, marks=pytest.mark.emudev(args=("--workers", "1")), id="one worker"),
    pytest.param(2, 3, marks=pytest.mark.emudev(args=("--workers", "2")), id="two workers"),
])
def test_imports_at_the_same_time_do_not_deadlock_the_daemon(emudev_mount, workers, clients):
    m = emudev_mount
    connection = fuse_connection(m.mountpoint)
    if not os.path.ismount("/sys/fs/fuse/connections"):
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"], check=False)
    if connection is None or not os.path.exists(f"/sys/fs/fuse/connections/{connection}/abort"):
        pytest.skip("fusectl (/sys/fs/fuse/connections) cannot be mounted here; it is what would undo a "
                    "deadlocked daemon if this test failed")

    def importer(chan: Channel) -> None:
        chan.recv()
        with Device(m.node(0)) as d, SwSyncTimeline(m.mountpoint) as tl:
            raw = Raw(d)
            handle = raw.create()
            for _ in range(100):
                raw.import_point(handle, tl, 1)

    with ExitStack() as stack:
        children = [stack.enter_context(forked(importer)) for _ in range(clients)]
        left = {child.pid for child in children}
        try:
            for child in children:
                child.chan.send("go")
            deadline = time.monotonic() + 5.0
            while left and time.monotonic() < deadline:
                left -= {pid for pid in left if os.waitpid(pid, os.WNOHANG)[0]}
                time.sleep(0.01)
        finally:
            if left:  # undo the deadlock, or nothing (not even SIGKILL) ends these processes
                abort = os.open(f"/sys/fs/fuse/connections/{connection}/abort", os.O_WRONLY)
                try:
                    os.write(abort, b"1")
                finally:
                    os.close(abort)
        for child in children:
            if child.pid not in left:
                child.status = 0
    assert not left, f"{len(left)} of {clients} importers stuck: the daemon ({workers} workers) deadlocked"
