"""The SYNCOBJ ioctls, with drm_syncobj.c's checks in its order and its errnos."""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable

from emudev import check
from emudev.drm.completion import Completion
from emudev.drm.file import DrmFile, process_threads
from emudev.drm.ioctl import ioctl_handler
from emudev.drm.userfd import caller_fd, caller_fd_info
from emudev.drm.usermem import UserMemory
from emudev.nodes.tree import OpenFile
from emudev.sync import sync_file
from emudev.sync.fence import now_ns, signaled_stub
from emudev.sync.syncobj import NotSubmitted, Syncobj
from emudev.sync.timer import deadlines
from emudev.sync.wait import AVAILABLE, FOR_SUBMIT, SyncobjWait
from emudev.uapi import defs

# drm_syncobj_find_fence(): how long WAIT_FOR_SUBMIT waits inside TRANSFER.
FIND_FENCE_TIMEOUT_NS = 5_000_000_000
# A bound on handle arrays, where the kernel's allocation would fail.
MAX_HANDLES = 1 << 20

EXPORT_SYNC_FILE = defs.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
EXPORT_TIMELINE = defs.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE
IMPORT_SYNC_FILE = defs.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
IMPORT_TIMELINE = defs.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE
_WAIT_FLAGS = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL | FOR_SUBMIT | defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
_TIMELINE_WAIT_FLAGS = _WAIT_FLAGS | AVAILABLE


class SyncobjFile(OpenFile):
    """An opaque syncobj fd (the kernel's "syncobj_file"): it only refers to the syncobj."""

    def __init__(self, syncobj: Syncobj) -> None:
        self.syncobj = syncobj.get()

    def release(self) -> None:
        self.syncobj.put()


def release_file(file: DrmFile) -> None:
    """drm_syncobj_release(): a closed file drops its syncobj handles."""
    for syncobj in file.syncobjs.drain():
        syncobj.put()


def _find(file: DrmFile, handle: int) -> Syncobj:
    syncobj = file.syncobjs.lookup(handle)
    if syncobj is None:
        raise OSError(errno.ENOENT, "no such syncobj")
    return syncobj


def _read_array(user: UserMemory, address: int, count: int, fmt: str) -> list[int]:
    if count > MAX_HANDLES:
        raise OSError(errno.ENOMEM, "too many handles")
    size = struct.calcsize(fmt)
    return list(struct.unpack(f"<{count}{fmt}", user.read(address, count * size))) if count else []


def _find_array(file: DrmFile, user: UserMemory, address: int, count: int) -> list[Syncobj]:
    """drm_syncobj_array_find(): copy the handles (EFAULT), look each up (ENOENT)."""
    return [_find(file, h) for h in _read_array(user, address, count, "I")]


def _points(user: UserMemory, address: int, count: int) -> list[int]:
    """A user array of u64 points; a NULL pointer means every point is 0."""
    return _read_array(user, address, count, "Q") if address else [0] * count


@ioctl_handler("DRM_IOCTL_SYNCOBJ_CREATE")
def create(file: DrmFile, args: defs.drm_syncobj_create, user: UserMemory) -> int:
    if args.flags & ~defs.DRM_SYNCOBJ_CREATE_SIGNALED:
        raise OSError(errno.EINVAL, "unknown flags")
    syncobj = Syncobj()
    if args.flags & defs.DRM_SYNCOBJ_CREATE_SIGNALED:
        syncobj.replace(signaled_stub())
    args.handle = file.syncobjs.insert(syncobj.get())
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_DESTROY")
def destroy(file: DrmFile, args: defs.drm_syncobj_destroy, user: UserMemory) -> int:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    syncobj = file.syncobjs.remove(args.handle)
    if syncobj is None:
        raise OSError(errno.EINVAL, "no such syncobj")
    syncobj.put()
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD")
def handle_to_fd(file: DrmFile, args: defs.drm_syncobj_handle, user: UserMemory) -> int:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    if args.flags not in (0, EXPORT_SYNC_FILE, EXPORT_SYNC_FILE | EXPORT_TIMELINE):
        raise OSError(errno.EINVAL, "bad flags")
    mount = file.device.mounted()
    if args.flags & EXPORT_SYNC_FILE:
        point = args.point if args.flags & EXPORT_TIMELINE else 0
        try:
            fence = _find(file, args.handle).find(point)
        except NotSubmitted:
            raise OSError(errno.EINVAL, "no fence to export") from None
        args.fd = sync_file.export(mount, user.pid, fence)
        return 0
    syncobj = file.syncobjs.lookup(args.handle)
    if syncobj is None:
        raise OSError(errno.EINVAL, "no such syncobj")
    args.fd = mount.issue_fd(user.pid, syncobj, lambda ino: SyncobjFile(syncobj), 0, writable=True,
                             get=syncobj.get, put=syncobj.put)
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE")
def fd_to_handle(file: DrmFile, args: defs.drm_syncobj_handle, user: UserMemory) -> int:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    if args.flags not in (0, IMPORT_SYNC_FILE, IMPORT_SYNC_FILE | IMPORT_TIMELINE):
        raise OSError(errno.EINVAL, "bad flags")
    mount = file.device.mounted()
    if args.flags & IMPORT_SYNC_FILE:
        fence = sync_file.fence_of(mount, user.pid, args.fd)
        if fence is None:
            raise OSError(errno.EINVAL, "not a sync_file")
        syncobj = _find(file, args.handle)
        point = args.point if args.flags & IMPORT_TIMELINE else 0
        if point:
            syncobj.add_point(fence, point)
        else:
            syncobj.replace(fence)
        return 0
    try:
        target = mount.identify(user.pid, args.fd)
    except OSError:
        raise OSError(errno.EINVAL, "bad fd") from None
    if not isinstance(target, Syncobj):
        raise OSError(errno.EINVAL, "not a syncobj fd")
    args.handle = file.syncobjs.insert(target.get())
    return 0


def _wait(file: DrmFile, args: defs.UapiStruct, user: UserMemory, allowed: int, timeline: bool) -> int | Completion:
    if args.flags & ~allowed:
        raise OSError(errno.EINVAL, "unknown flags")
    if args.count_handles == 0:
        return 0
    syncobjs = _find_array(file, user, args.handles, args.count_handles)
    points = _points(user, args.points, args.count_handles) if timeline else [0] * len(syncobjs)
    deadline = args.deadline_nsec if args.flags & defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE else None

    def set_first(index: int) -> None:
        args.first_signaled = index

    waiter = SyncobjWait(syncobjs, points, args.flags, set_first)
    result = waiter.start(args.timeout_nsec, deadline)
    if check.active is not None and isinstance(result, Completion) and args.flags & FOR_SUBMIT:
        missing = [entry.syncobj for entry in waiter.entries if entry.fence is None]
        if missing:
            check.active.deadlocks.wait_for_submit(file, missing, process_threads(file.client.tgid))
    return result


@ioctl_handler("DRM_IOCTL_SYNCOBJ_WAIT")
def wait(file: DrmFile, args: defs.drm_syncobj_wait, user: UserMemory) -> int | Completion:
    return _wait(file, args, user, _WAIT_FLAGS, timeline=False)


@ioctl_handler("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT")
def timeline_wait(file: DrmFile, args: defs.drm_syncobj_timeline_wait, user: UserMemory) -> int | Completion:
    return _wait(file, args, user, _TIMELINE_WAIT_FLAGS, timeline=True)


def _array_op(file: DrmFile, args: defs.drm_syncobj_array, user: UserMemory) -> list[Syncobj]:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    if args.count_handles == 0:
        raise OSError(errno.EINVAL, "no handles")
    return _find_array(file, user, args.handles, args.count_handles)


@ioctl_handler("DRM_IOCTL_SYNCOBJ_RESET")
def reset(file: DrmFile, args: defs.drm_syncobj_array, user: UserMemory) -> int:
    for syncobj in _array_op(file, args, user):
        syncobj.replace(None)
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_SIGNAL")
def signal(file: DrmFile, args: defs.drm_syncobj_array, user: UserMemory) -> int:
    for syncobj in _array_op(file, args, user):
        syncobj.replace(signaled_stub())
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL")
def timeline_signal(file: DrmFile, args: defs.drm_syncobj_timeline_array, user: UserMemory) -> int:
    if args.flags:
        raise OSError(errno.EINVAL, "flags must be zero")
    if args.count_handles == 0:
        raise OSError(errno.EINVAL, "no handles")
    syncobjs = _find_array(file, user, args.handles, args.count_handles)
    for syncobj, point in zip(syncobjs, _points(user, args.points, len(syncobjs)), strict=True):
        syncobj.add_point(signaled_stub(), point)  # point 0 too: the kernel chains a node for it
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_QUERY")
def query(file: DrmFile, args: defs.drm_syncobj_timeline_array, user: UserMemory) -> int:
    if args.flags & ~defs.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED:
        raise OSError(errno.EINVAL, "unknown flags")
    if args.count_handles == 0:
        raise OSError(errno.EINVAL, "no handles")
    syncobjs = _find_array(file, user, args.handles, args.count_handles)
    last_submitted = bool(args.flags & defs.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED)
    points = [s.query(last_submitted) for s in syncobjs]
    if check.active is not None and not last_submitted:
        for syncobj, point in zip(syncobjs, points, strict=True):
            check.active.order.queried(syncobj, syncobj.generation, point, f"QUERY by pid {file.client.tgid}")
    user.write(args.points, struct.pack(f"<{len(points)}Q", *points))
    return 0


@ioctl_handler("DRM_IOCTL_SYNCOBJ_TRANSFER")
def transfer(file: DrmFile, args: defs.drm_syncobj_transfer, user: UserMemory) -> int | Completion:
    """Move the fence of src_point to dst (a new point, or the binary fence when dst_point is 0).

    With WAIT_FOR_SUBMIT in `flags` a missing source fence is waited for, at most 5 s (-ETIME),
    as drm_syncobj_find_fence() does; the rest of `flags` is not checked, as in the kernel."""
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    dst = _find(file, args.dst_handle)
    src = _find(file, args.src_handle)

    def move() -> bool:
        try:
            fence = src.find(args.src_point)
        except NotSubmitted:
            return False
        if args.dst_point:
            dst.add_point(fence, args.dst_point)
        else:
            dst.replace(fence)
        return True

    if move():
        return 0
    if not args.flags & FOR_SUBMIT:
        raise OSError(errno.EINVAL, "no fence at the source point")
    done = Completion()
    done.on_cleanup(src.on_change(lambda: move() and done.complete(0)))
    done.on_cleanup(deadlines.at(now_ns() + FIND_FENCE_TIMEOUT_NS, lambda: done.complete(-errno.ETIME)))
    return done


@ioctl_handler("DRM_IOCTL_SYNCOBJ_EVENTFD")
def eventfd(file: DrmFile, args: defs.drm_syncobj_eventfd, user: UserMemory) -> int:
    """Add 1 to the caller's eventfd once `point` is signalled (or has a fence, with WAIT_AVAILABLE)."""
    if args.flags & ~AVAILABLE:
        raise OSError(errno.EINVAL, "unknown flags")
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    syncobj = _find(file, args.handle)
    if "eventfd-count" not in caller_fd_info(user.pid, args.fd):
        raise OSError(errno.EINVAL, "not an eventfd")
    with caller_fd(user.pid, args.fd) as dup:
        target = os.dup(dup)
    EventfdEntry(syncobj, args.point, bool(args.flags & AVAILABLE), target).arm()
    return 0


class EventfdEntry:
    """One SYNCOBJ_EVENTFD registration (syncobj_eventfd_entry): it watches the syncobj until
    a fence covers the point, then that fence; it fires once and lets go of the eventfd."""

    def __init__(self, syncobj: Syncobj, point: int, available: bool, fd: int) -> None:
        self.syncobj = syncobj
        self.point = point
        self.available = available
        self.fd = fd
        self._lock = threading.Lock()
        self._found = False
        self._remove: Callable[[], None] = lambda: None

    def arm(self) -> None:
        self.syncobj.on_release(self._drop)
        self._remove = self.syncobj.on_change(self._check)
        self._check()

    def _drop(self) -> None:
        """The syncobj is gone with the point never reached: close the eventfd unsignalled."""
        with self._lock:
            if self._found:
                return
            self._found = True
        self._remove()
        os.close(self.fd)

    def _check(self) -> None:
        try:
            fence = self.syncobj.find(self.point)
        except NotSubmitted:
            return
        with self._lock:
            if self._found:
                return
            self._found = True
        self._remove()
        if self.available:
            self._fire()
        else:
            fence.when_signaled(lambda _f: self._fire())

    def _fire(self) -> None:
        try:
            os.write(self.fd, (1).to_bytes(8, "little"))
        except OSError:
            pass  # the eventfd's counter is full; the kernel's eventfd_signal saturates too
        finally:
            os.close(self.fd)
