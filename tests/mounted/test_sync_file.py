"""sync_file, sw_sync and dma-buf implicit sync through a mounted node, as sync_file.c,
sw_sync.c and dma-buf.c have them.

Fences come from the mount's sw_sync timelines (MOUNT/sw_sync, the kernel's debugfs
sync/sw_sync uapi); their sync_files are inspected with raw SYNC_IOC_* ioctls on structs
from emudev.uapi.defs and polled. A sync_file is also passed to a forked process over a
unix socket (SCM_RIGHTS).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from forking import Channel, forked

from emudev.uapi import defs
from userspace.libaccel import SwSyncTimeline, Syncobj, abs_timeout, claim_fd
from userspace.libaccel.sync import SyncFile

PAGE = mmap.PAGESIZE
NO_FD = 999_999  # a descriptor number nothing has open
MS = 1_000_000
READ, WRITE, RW = defs.DMA_BUF_SYNC_READ, defs.DMA_BUF_SYNC_WRITE, defs.DMA_BUF_SYNC_RW


@pytest.fixture(scope="module")
def mount(emudev_shared_mount):
    return emudev_shared_mount


@contextmanager
def sw_timeline(mount) -> Iterator[SwSyncTimeline]:
    with SwSyncTimeline(mount.mountpoint) as tl:
        yield tl


@pytest.fixture
def timeline(mount):
    with sw_timeline(mount) as tl:
        yield tl


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def ioctl_errno(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno


def comm() -> str:
    """What the kernel names a sw_sync timeline: the comm of the process that opened it."""
    with open("/proc/self/comm") as f:
        return f.read().strip()


def file_info(sync_file: SyncFile, num_fences: int = 0, flags: int = 0, pad: int = 0):
    """SYNC_IOC_FILE_INFO by hand: (the struct back, the fence infos)."""
    infos = (defs.sync_fence_info * max(num_fences, 1))()
    args = defs.sync_file_info(num_fences=num_fences, flags=flags, pad=pad,
                               sync_fence_info=ctypes.addressof(infos) if num_fences else 0)
    fcntl.ioctl(sync_file.fd, defs.SYNC_IOC_FILE_INFO, args, True)
    return args, list(infos[: args.num_fences]) if num_fences else []


def text(field: Any) -> str:
    return bytes(field).split(b"\0", 1)[0].decode()


def merge(a: SyncFile, b_fd: int, name: bytes = b"merged", flags: int = 0, pad: int = 0) -> defs.sync_merge_data:
    args = defs.sync_merge_data(fd2=b_fd, fence=-1, flags=flags, pad=pad)
    args.name = name
    fcntl.ioctl(a.fd, defs.SYNC_IOC_MERGE, args, True)
    return args


def merged(a: SyncFile, b: SyncFile, name: str = "merged") -> SyncFile:
    return a.merge(b, name)


def signalled(sync_file: SyncFile) -> bool:
    return sync_file.wait(0)


def set_deadline(sync_file: SyncFile, deadline_ns: int, pad: int = 0) -> None:
    fcntl.ioctl(sync_file.fd, defs.SYNC_IOC_SET_DEADLINE, defs.sync_set_deadline(deadline_ns=deadline_ns, pad=pad),
                True)


def get_deadline(timeline: SwSyncTimeline, fence: SyncFile, deadline_ns: int = 0, pad: int = 0) -> int:
    args = defs.sw_sync_get_deadline(fence_fd=fence.fd, deadline_ns=deadline_ns, pad=pad)
    fcntl.ioctl(timeline.fd, defs.SW_SYNC_GET_DEADLINE, args, True)
    return args.deadline_ns


def poll_events(fd: int, events: int, timeout: float = 0) -> int:
    poller = select.poll()
    poller.register(fd, events)
    return sum(e for _, e in poller.poll(int(timeout * 1000)))


# --- processes -------------------------------------------------------------------------------


# --- sw_sync ---------------------------------------------------------------------------------


def test_sw_sync_points_signal_in_order(timeline):
    fences = {value: timeline.fence(value) for value in (1, 2, 3, 5)}
    try:
        assert not any(signalled(f) for f in fences.values())
        for inc, expected in ((1, {1}), (1, {1, 2}), (2, {1, 2, 3}), (1, {1, 2, 3, 5})):
            timeline.inc(inc)
            assert {v for v, f in fences.items() if signalled(f)} == expected
        with timeline.fence(4) as passed:
            assert signalled(passed), "a point the timeline has passed is signalled at creation"
        stamps = [file_info(fences[v], 1)[1][0].timestamp_ns for v in (1, 2, 3, 5)]
        assert 0 < stamps[0] <= stamps[1] <= stamps[2] <= stamps[3] <= now_ns()
    finally:
        for f in fences.values():
            f.close()


def test_poll_blocks_until_the_timeline_reaches_the_point(timeline):
    with timeline.fence(1) as fence:
        assert poll_events(fence.fd, select.POLLIN) == 0
        incremented: list[int] = []

        def inc() -> None:
            incremented.append(now_ns())
            timeline.inc()

        timer = threading.Timer(0.2, inc)
        started = now_ns()
        timer.start()
        try:
            assert poll_events(fence.fd, select.POLLIN, timeout=5.0) == select.POLLIN
            woke = now_ns()
        finally:
            timer.join()
        assert started < incremented[0] <= woke, "poll returned before the point was reached"


def test_closing_the_timeline_signals_what_is_left_with_enoent(mount):
    with sw_timeline(mount) as tl:
        done, left = tl.fence(1), tl.fence(2)
        tl.inc()
    try:
        # The kernel's FUSE layer sends RELEASE in the background after close() returns: poll, do not peek.
        assert left.wait(timeout=5.0)
        assert file_info(done)[0].status == 1
        info, fences = file_info(left, 1)
        assert info.status == -errno.ENOENT
        assert (fences[0].status, fences[0].timestamp_ns > 0) == (-errno.ENOENT, True)
    finally:
        done.close()
        left.close()


def test_unknown_ioctls_are_enotty(timeline):
    with timeline.fence(1) as fence:
        unknown = [(3 << 30) | (56 << 16) | (ord(">") << 8) | nr for nr in (0, 1, 2, 6)]
        for cmd in [*unknown, defs.DRM_IOCTL_SYNCOBJ_CREATE, defs.DMA_BUF_IOCTL_EXPORT_SYNC_FILE]:
            assert ioctl_errno(lambda c=cmd: fcntl.ioctl(fence.fd, c, bytearray(64), True)) == errno.ENOTTY, hex(cmd)
        for cmd in (defs.SYNC_IOC_FILE_INFO, (3 << 30) | (8 << 16) | (ord("W") << 8) | 7):
            assert ioctl_errno(lambda c=cmd: fcntl.ioctl(timeline.fd, c, bytearray(64), True)) == errno.ENOTTY


# --- FILE_INFO -------------------------------------------------------------------------------


def test_file_info(timeline):
    with timeline.fence(1) as fence:
        before = now_ns()
        info, _ = file_info(fence)
        assert (info.num_fences, info.status) == (1, 0)
        assert text(info.name), "num_fences 0 still returns the name"
        assert info.sync_fence_info == 0, "nothing written where there is no array"
        info, (one,) = file_info(fence, 1)
        assert (info.num_fences, info.status) == (1, 0)
        assert (text(one.driver_name), text(one.obj_name)) == ("sw_sync", comm())
        assert (one.status, one.flags, one.timestamp_ns) == (0, 0, 0)
        timeline.inc()
        info, (one,) = file_info(fence, 4)
        assert (info.num_fences, info.status, one.status) == (1, 1, 1)
        assert before < one.timestamp_ns <= now_ns()
        for flags, pad in ((1, 0), (1 << 31, 0), (0, 1)):
            assert ioctl_errno(lambda f=flags, p=pad: file_info(fence, 1, flags=f, pad=p)) == errno.EINVAL


def test_file_info_status_of_several_fences(mount):
    with sw_timeline(mount) as a, sw_timeline(mount) as b:
        x, y = a.fence(1), b.fence(1)
        xy = merged(x, y)
    # both timelines closed: both fences failed with -ENOENT
    with sw_timeline(mount) as c, sw_timeline(mount) as d:
        p, q = c.fence(1), d.fence(1)
        pq = merged(p, q)
        try:
            assert ioctl_errno(lambda: file_info(pq, 1)) == errno.EINVAL, "an array smaller than the fences"
            info, fences = file_info(pq, 2)
            assert (info.num_fences, info.status, sorted(f.status for f in fences)) == (2, 0, [0, 0])
            c.inc()
            info, fences = file_info(pq, 2)
            assert (info.status, sorted(f.status for f in fences)) == (0, [0, 1]), "a pending fence: active"
            assert file_info(pq)[0].status == 0
            d.inc()
            info, fences = file_info(pq, 3)
            assert (info.num_fences, info.status, [f.status for f in fences]) == (2, 1, [1, 1])
            assert file_info(pq)[0].status == 1
            info, fences = file_info(xy, 2)
            assert (info.status, [f.status for f in fences]) == (-errno.ENOENT, [-errno.ENOENT] * 2)
            assert file_info(xy)[0].status == -errno.ENOENT
        finally:
            for f in (x, y, xy, p, q, pq):
                f.close()


def test_a_sw_sync_file_is_named_after_its_fence(timeline):
    with timeline.fence(7, name="given") as fence:
        name = text(file_info(fence)[0].name)
        assert re.fullmatch(rf"sw_sync-{re.escape(comm())}\d+-7", name), name


# --- MERGE -----------------------------------------------------------------------------------


def test_merge_errors(timeline):
    with timeline.fence(1) as a, timeline.fence(2) as b, open(os.devnull) as null:
        for flags, pad in ((1, 0), (0, 1), (1 << 31, 0)):
            assert ioctl_errno(lambda f=flags, p=pad: merge(a, b.fd, flags=f, pad=p)) == errno.EINVAL
        for fd in (NO_FD, -1, null.fileno(), timeline.fd):
            assert ioctl_errno(lambda f=fd: merge(a, f)) == errno.ENOENT, fd
        assert ioctl_errno(lambda: merge(a, NO_FD, flags=1)) == errno.EINVAL, "flags before fd2"


@pytest.mark.parametrize("later_first", [False, True])
def test_merge_of_one_timeline_keeps_the_later_point(timeline, later_first):
    with timeline.fence(2) as early, timeline.fence(5) as late:
        with merged(*((late, early) if later_first else (early, late)), "same") as m:
            info, (only,) = file_info(m, 1)
            assert (text(info.name), info.num_fences) == ("same", 1)
            assert text(only.obj_name) == comm()
            timeline.inc(2)
            assert signalled(early) and not signalled(m), "the merge waits for point 5"
            timeline.inc(3)
            assert m.wait(5.0) and file_info(m)[0].status == 1


def test_merge_of_two_timelines_signals_when_both_have(mount):
    with sw_timeline(mount) as a, sw_timeline(mount) as b, a.fence(1) as x, b.fence(3) as y, merged(x, y, "both") as m:
        info, fences = file_info(m, 2)
        assert (text(info.name), info.num_fences) == ("both", 2)
        assert [text(f.driver_name) for f in fences] == ["sw_sync", "sw_sync"]
        a.inc()
        assert signalled(x) and not signalled(m)
        b.inc(2)
        assert not signalled(m)
        b.inc()
        assert m.wait(5.0)
        assert [f.status for f in file_info(m, 2)[1]] == [1, 1]


# --- deadlines -------------------------------------------------------------------------------


def test_set_deadline(mount):
    with sw_timeline(mount) as a, sw_timeline(mount) as b:
        x, y = a.fence(1), b.fence(1)
        try:
            assert ioctl_errno(lambda: get_deadline(a, x)) == errno.ENOENT, "no deadline yet"
            hint = now_ns() + 60_000 * MS
            assert ioctl_errno(lambda: set_deadline(x, hint, pad=1)) == errno.EINVAL
            assert ioctl_errno(lambda: get_deadline(a, x)) == errno.ENOENT
            set_deadline(x, hint)
            assert get_deadline(a, x) == hint
            set_deadline(x, hint + 1000)
            assert get_deadline(a, x) == hint, "the earliest deadline stays"
            with merged(x, y) as m:
                set_deadline(m, hint - 1000)
            assert (get_deadline(a, x), get_deadline(b, y)) == (hint - 1000, hint - 1000), "to every member"
            assert ioctl_errno(lambda: get_deadline(a, x, pad=1)) == errno.EINVAL
        finally:
            x.close()
            y.close()


def test_get_deadline_wants_deadline_ns_zero(timeline):
    with timeline.fence(1) as fence:
        set_deadline(fence, now_ns() + 60_000 * MS)
        assert ioctl_errno(lambda: get_deadline(timeline, fence, deadline_ns=1)) == errno.EINVAL


def test_get_deadline_of_a_fence_of_another_timeline(mount):
    with sw_timeline(mount) as a, sw_timeline(mount) as b, a.fence(1) as fence:
        hint = now_ns() + 60_000 * MS
        set_deadline(fence, hint)
        assert get_deadline(b, fence) == hint


# --- sharing ---------------------------------------------------------------------------------


def test_a_sync_file_sent_to_another_process_is_waitable_there(timeline):
    def waiter(chan: Channel) -> None:
        _, (fd,) = chan.recv()
        with SyncFile(fd) as fence:
            chan.send(signalled(fence))
            chan.recv()
            woke = fence.wait(5.0)
            chan.send((woke, file_info(fence)[0].status))

    with timeline.fence(1) as fence, forked(waiter) as child:
        child.chan.send(None, fds=[fence.fd])
        assert child.recv()[0] is False
        timeline.inc()
        child.chan.send("signalled")
        assert child.recv()[0] == (True, 1)
        child.join()


# --- implicit sync on a dma-buf --------------------------------------------------------------


def export_sync_file(buf_fd: int, flags: int) -> SyncFile:
    args = defs.dma_buf_export_sync_file(flags=flags, fd=-1)
    fcntl.ioctl(buf_fd, defs.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, args, True)
    return SyncFile(claim_fd(buf_fd, args.fd, defs.DRM_CLOEXEC))


def import_sync_file(buf_fd: int, sync_fd: int, flags: int) -> None:
    fcntl.ioctl(buf_fd, defs.DMA_BUF_IOCTL_IMPORT_SYNC_FILE, defs.dma_buf_import_sync_file(flags=flags, fd=sync_fd),
                True)


def test_a_writer_fence_holds_back_readers_and_writers(dev, timeline):
    bo = dev.create_bo(PAGE)
    try:
        with bo.export() as buf:
            both = select.POLLIN | select.POLLOUT
            assert poll_events(buf.fd, both) == both
            with export_sync_file(buf.fd, READ) as idle:
                assert signalled(idle), "no fences: a signalled stub"
            with timeline.fence(1) as writer:
                buf.import_sync_file(writer, write=True)
            assert poll_events(buf.fd, both) == 0
            assert ioctl_errno(lambda: bo.wait(abs_timeout(0.05))) == errno.ETIME
            with export_sync_file(buf.fd, READ) as writers, export_sync_file(buf.fd, RW) as everyone:
                assert not signalled(writers) and not signalled(everyone)
                assert [text(f.driver_name) for f in file_info(writers, 1)[1]] == ["sw_sync"]
                done: list[int] = []
                poller = threading.Thread(target=lambda: done.append(poll_events(buf.fd, select.POLLIN, 5.0)))
                poller.start()
                timeline.inc()
                poller.join(6.0)
                assert done == [select.POLLIN], "a poller on the dma-buf was not woken"
                assert writers.wait(5.0) and everyone.wait(5.0)
            assert poll_events(buf.fd, both) == both
            bo.wait(abs_timeout(1.0))
    finally:
        bo.close()


def test_a_reader_fence_holds_back_writers_only(dev, timeline):
    bo = dev.create_bo(PAGE)
    try:
        with bo.export() as buf, timeline.fence(1) as reader:
            buf.import_sync_file(reader, write=False)
            assert poll_events(buf.fd, select.POLLIN | select.POLLOUT) == select.POLLIN
            with export_sync_file(buf.fd, READ) as writers, export_sync_file(buf.fd, WRITE) as everyone:
                assert signalled(writers) and not signalled(everyone)
                assert ioctl_errno(lambda: bo.wait(abs_timeout(0.05))) == errno.ETIME
                bo.prep(write=False, timeout_ns=abs_timeout(1.0))
                bo.fini()
                assert ioctl_errno(lambda: bo.prep(write=True, timeout_ns=abs_timeout(0.05))) == errno.ETIME
                timeline.inc()
                assert everyone.wait(5.0)
            bo.wait(abs_timeout(1.0))
            assert poll_events(buf.fd, select.POLLOUT) == select.POLLOUT
    finally:
        bo.close()


def test_dma_buf_sync_file_errors(dev, timeline):
    bo = dev.create_bo(PAGE)
    try:
        with bo.export() as buf, timeline.fence(1) as fence, open(os.devnull) as null:
            for flags in (0, 4, 1 << 31, RW | 4):
                assert ioctl_errno(lambda f=flags: export_sync_file(buf.fd, f)) == errno.EINVAL
                assert ioctl_errno(lambda f=flags: import_sync_file(buf.fd, fence.fd, f)) == errno.EINVAL
            for fd in (null.fileno(), buf.fd, dev.fd, NO_FD, -1):
                assert ioctl_errno(lambda f=fd: import_sync_file(buf.fd, f, WRITE)) == errno.EINVAL, fd
            assert poll_events(buf.fd, select.POLLIN | select.POLLOUT) == select.POLLIN | select.POLLOUT
    finally:
        bo.close()


# --- syncobjs and sync_files -----------------------------------------------------------------


def test_a_syncobj_takes_a_sync_file_and_gives_one_back(dev, timeline):
    binary = Syncobj.create(dev)
    with timeline.fence(1) as fence:
        binary.import_sync_file(fence)
    assert ioctl_errno(lambda: binary.wait(timeout_ns=0)) == errno.ETIME
    with binary.export_sync_file() as snapshot:
        info, (one,) = file_info(snapshot, 1)
        assert (info.status, text(one.driver_name), text(one.obj_name)) == (0, "sw_sync", comm())
        binary.reset()  # the sync_file keeps the fence it was made with
        timeline.inc()
        assert snapshot.wait(5.0) and file_info(snapshot)[0].status == 1
    assert ioctl_errno(lambda: binary.export_sync_file()) == errno.EINVAL, "an empty syncobj has nothing to export"
    binary.destroy()


def test_timeline_points_to_and_from_sync_files(dev, timeline):
    t = Syncobj.create(dev)
    t.signal(point=1)
    with timeline.fence(1) as fence:
        t.import_sync_file(fence, point=3)
    assert (t.query(), t.query(last_submitted=True)) == (1, 3)
    assert ioctl_errno(lambda: t.wait(point=3, timeout_ns=0)) == errno.ETIME
    with t.export_sync_file(point=3) as third, t.export_sync_file(point=1) as first:
        assert signalled(first) and not signalled(third)
        # the walk behind the point has collected point 1: only the pending fence is left
        info, fences = file_info(third, 2)
        assert (info.num_fences, [text(f.driver_name) for f in fences]) == (1, ["sw_sync"])
        assert re.fullmatch(r"dma_fence_chain-unbound\d+-3", text(info.name)), text(info.name)
        assert ioctl_errno(lambda: t.export_sync_file(point=4)) == errno.EINVAL, "point 4 is not submitted"
        timeline.inc()
        assert third.wait(5.0)
    t.wait(point=3, timeout_ns=abs_timeout(1.0))
    assert t.query() == 3
    t.destroy()


def test_a_signalled_stub_is_named_stub(dev):
    signalled_syncobj = Syncobj.create(dev, signaled=True)
    with signalled_syncobj.export_sync_file() as sf:
        (one,) = file_info(sf, 1)[1]
        assert (text(one.driver_name), text(one.obj_name), one.status) == ("stub", "stub", 1)
    signalled_syncobj.destroy()
