"""sw_sync: a software timeline whose fences signal on command (drivers/dma-buf/sw_sync.c).

MOUNT/sw_sync behaves like the kernel's debugfs sync/sw_sync: each open is a new
timeline; SW_SYNC_IOC_CREATE_FENCE returns a sync_file for a point, and
SW_SYNC_IOC_INC advances the timeline, signalling every point it passes. Closing
the timeline signals what is left with -ENOENT. Test suites use it to make fences
that signal exactly when they say so.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

from emudev.drm.ioctl import ioctl_handler
from emudev.drm.usermem import UserMemory
from emudev.nodes.command_file import CommandFile
from emudev.sync import sync_file
from emudev.sync.fence import DmaFence, new_context
from emudev.uapi import defs

if TYPE_CHECKING:
    from emudev.nodes.services import MountServices

INT_MAX = 0x7FFFFFFF

class Timeline(CommandFile):
    family = "sw_sync"

    def __init__(self, mount: MountServices, name: str) -> None:
        self.mount = mount
        self.context = new_context()
        self.name = name
        self.value = 0
        self._pending: list[DmaFence] = []
        self._lock = threading.Lock()

    def point(self, value: int) -> DmaFence:
        """sync_pt_create(): a fence at `value`, already signalled if the timeline is past it."""
        fence = DmaFence(self.context, value, "sw_sync", self.name)
        with self._lock:
            passed = value <= self.value
            if not passed:
                self._pending.append(fence)
        if passed:
            fence.signal()
        return fence

    def advance(self, inc: int) -> None:
        """sync_timeline_signal(): move on by `inc` and signal the points reached, in order."""
        with self._lock:
            self.value = (self.value + inc) & 0xFFFFFFFF
            reached = sorted((f for f in self._pending if f.seqno <= self.value), key=lambda f: f.seqno)
            self._pending = [f for f in self._pending if f.seqno > self.value]
        for fence in reached:
            fence.signal()

    def release(self) -> None:
        with self._lock:
            left, self._pending = self._pending, []
        for fence in left:
            fence.signal(-errno.ENOENT)


@ioctl_handler("SW_SYNC_IOC_CREATE_FENCE")
def create_fence(timeline: Timeline, args: defs.sw_sync_create_fence_data, user: UserMemory) -> int:
    fence = timeline.point(args.value)  # the kernel ignores args.name: the file is named after the fence
    args.fence = sync_file.export(timeline.mount, user.pid, fence)
    return 0


@ioctl_handler("SW_SYNC_IOC_INC")
def inc(timeline: Timeline, args: defs.sw_sync_inc_arg, user: UserMemory) -> int:
    value = args.value
    while value > INT_MAX:
        timeline.advance(INT_MAX)
        value -= INT_MAX
    timeline.advance(value)
    return 0


@ioctl_handler("SW_SYNC_GET_DEADLINE")
def get_deadline(timeline: Timeline, args: defs.sw_sync_get_deadline, user: UserMemory) -> int:
    if args.pad or args.deadline_ns:
        raise OSError(errno.EINVAL, "pad and deadline_ns must be zero")
    fence = sync_file.fence_of(timeline.mount, user.pid, args.fence_fd)
    if fence is None or fence.driver_name != "sw_sync":
        raise OSError(errno.EINVAL, "not a sw_sync fence")
    if not fence.deadline_ns:
        raise OSError(errno.ENOENT, "no deadline set")
    args.deadline_ns = fence.deadline_ns
    return 0
