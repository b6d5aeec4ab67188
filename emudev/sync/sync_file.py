"""sync_file: a fence as a file descriptor (drivers/dma-buf/sync_file.c)."""

from __future__ import annotations

import errno
import select
import threading
from typing import TYPE_CHECKING

from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.fuse import Request
from emudev.nodes.command_file import CommandFile
from emudev.sync.array import merge, unwrap
from emudev.sync.fence import DmaFence
from emudev.uapi import defs

if TYPE_CHECKING:
    from emudev.nodes.services import MountServices

NAME_LEN = 32


class SyncFile:
    """The object behind every descriptor of one sync_file."""

    def __init__(self, fence: DmaFence, name: str = "") -> None:
        self.fence = fence
        self.user_name = name

    def name(self) -> str:
        """sync_file_get_name(): the merge name, else driver-timeline-context-seqno."""
        if self.user_name:
            return self.user_name
        f = self.fence
        return f"{f.driver_name}-{f.timeline_name}{f.context}-{f.seqno}"


def export(mount: MountServices, caller_pid: int, fence: DmaFence, name: str = "") -> int:
    """A new sync_file for `fence`, as an fd ticket (O_CLOEXEC, read-only, as the kernel's)."""
    sync_file = SyncFile(fence, name)
    return mount.issue_fd(caller_pid, sync_file, lambda ino: SyncFileFile(sync_file, mount), 0,
                          writable=False, get=lambda: None, put=lambda: None)


def fence_of(mount: MountServices, pid: int, fd: int) -> DmaFence | None:
    """sync_file_get_fence(): the fence of the caller's fd `fd`, None if it is not a sync_file."""
    try:
        target = mount.identify(pid, fd)
    except OSError:
        return None
    return target.fence if isinstance(target, SyncFile) else None


class SyncFileFile(CommandFile):
    family = "sync_file"

    def __init__(self, sync_file: SyncFile, mount: MountServices) -> None:
        self.sync_file = sync_file
        self.mount = mount
        self._polled: set[int] = set()
        self._lock = threading.Lock()

    def poll(self, req: Request, kh: int | None, events: int) -> int:
        """POLLIN once signalled; otherwise wake the poller when it is."""
        fence = self.sync_file.fence
        if kh is not None and not fence.signaled:
            with self._lock:
                first = kh not in self._polled
                self._polled.add(kh)
            if first:
                fence.when_signaled(lambda _f: self.mount.notify_poll(kh))
        return select.POLLIN if fence.signaled else 0


@ioctl_handler("SYNC_IOC_MERGE")
def sync_merge(file: SyncFileFile, args: defs.sync_merge_data, user: UserMemory) -> int:
    if args.flags or args.pad:
        raise OSError(errno.EINVAL, "flags and pad must be zero")
    mount = file.mount
    other = fence_of(mount, user.pid, args.fd2)
    if other is None:
        raise OSError(errno.ENOENT, "fd2 is not a sync_file")
    name = bytes(args.name).split(b"\0", 1)[0][: NAME_LEN - 1].decode(errors="replace")
    args.fence = export(mount, user.pid, merge([file.sync_file.fence, other]), name)
    return 0


def _fence_info(fence: DmaFence) -> defs.sync_fence_info:
    info = defs.sync_fence_info(status=fence.status,
                                timestamp_ns=fence.timestamp_ns if fence.signaled else 0)
    info.obj_name = fence.timeline_name.encode()[: NAME_LEN - 1]
    info.driver_name = fence.driver_name.encode()[: NAME_LEN - 1]
    return info


@ioctl_handler("SYNC_IOC_FILE_INFO")
def sync_file_info(file: SyncFileFile, args: defs.sync_file_info, user: UserMemory) -> int:
    if args.flags or args.pad:
        raise OSError(errno.EINVAL, "flags and pad must be zero")
    fences = unwrap(file.sync_file.fence)
    if args.num_fences == 0:
        args.status = file.sync_file.fence.status
    else:
        if args.num_fences < len(fences):
            raise OSError(errno.EINVAL, "num_fences is smaller than the sync_file's")
        infos = [_fence_info(f) for f in fences]
        status = 1
        for info in infos:
            status = status if status <= 0 else info.status
        args.status = status
        user.write(args.sync_fence_info, b"".join(bytes(i) for i in infos))
    args.name = file.sync_file.name().encode()[: NAME_LEN - 1]
    args.num_fences = len(fences)
    return 0


@ioctl_handler("SYNC_IOC_SET_DEADLINE")
def sync_set_deadline(file: SyncFileFile, args: defs.sync_set_deadline, user: UserMemory) -> int:
    if args.pad:
        raise OSError(errno.EINVAL, "pad must be zero")
    for fence in unwrap(file.sync_file.fence):
        fence.set_deadline(args.deadline_ns)
    return 0

