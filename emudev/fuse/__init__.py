"""FUSE spoken directly over /dev/fuse: mount, serve requests, reply (now or later), notify.

Knows nothing about what it serves: a file system subclasses ``Operations`` and
returns the value types below, or ``DEFERRED`` to answer later through the
``Request``.
"""

from emudev.fuse.mount import MountError, is_mounted, mount, mount_device, mount_id, unmount
from emudev.fuse.ops import (
    DEFERRED,
    Attr,
    ConnInfo,
    Deferred,
    DirEntry,
    Entry,
    IoctlResult,
    Opened,
    Operations,
    StatFs,
)
from emudev.fuse.request import Request
from emudev.fuse.session import DEFAULT_WORKERS, Session, after_reply

__all__ = [
    "DEFAULT_WORKERS",
    "DEFERRED",
    "Attr",
    "ConnInfo",
    "Deferred",
    "DirEntry",
    "Entry",
    "IoctlResult",
    "MountError",
    "Opened",
    "Operations",
    "Request",
    "Session",
    "StatFs",
    "after_reply",
    "is_mounted",
    "mount",
    "mount_device",
    "mount_id",
    "unmount",
]
