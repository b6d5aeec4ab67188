"""Per-open-file state, the emulator's struct drm_file.

Everything a client owns (handles, contexts, names) hangs off its DrmFile, so that
closing the file, or the death of the process holding it, releases all of it.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

from emudev.drm.cpu_view import CpuView
from emudev.engine.vm import AddressSpace
from emudev.gem.handles import HandleTable
from emudev.gem.vma import FileMappings

_CAP_SYS_NICE = 23
_CAP_SYS_ADMIN = 21
_ids = itertools.count(1)


@dataclass
class ClientIdentity:
    """Who opened the file, read from /proc when the open arrives."""

    pid: int
    tgid: int
    uid: int
    comm: str
    cap_sys_admin: bool
    cap_sys_nice: bool = False

    @classmethod
    def of(cls, pid: int, uid: int) -> ClientIdentity:
        status = _proc_status(pid)
        tgid = int(status.get("Tgid", pid))
        cap_eff = int(status.get("CapEff", "0"), 16)
        return cls(pid=pid, tgid=tgid, uid=uid, comm=_proc_comm(pid),
                   cap_sys_admin=bool(cap_eff >> _CAP_SYS_ADMIN & 1), cap_sys_nice=bool(cap_eff >> _CAP_SYS_NICE & 1))


def _proc_status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def process_threads(tgid: int) -> int:
    """How many threads the process has (0 if it is gone)."""
    return int(_proc_status(tgid).get("Threads", "0"))


def thread_group(pid: int) -> int:
    """The process (tgid) a FUSE request's pid, which may be a thread, belongs to."""
    return int(_proc_status(pid).get("Tgid", pid))


def _proc_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


@dataclass(eq=False)
class DrmFile:
    """One open() of an accel node.

    `authenticated` follows drm_file_alloc(): only a CAP_SYS_ADMIN opener is, and accel
    files have no master and are not render clients.
    """

    device: object
    client: ClientIdentity
    id: int = field(default_factory=lambda: next(_ids))
    client_name: str | None = None
    objects: HandleTable = field(default_factory=HandleTable)
    syncobjs: HandleTable = field(default_factory=HandleTable)
    # PRIME's per-file lookup (drm_prime_file_private), both ways: handle <-> dma-buf.
    prime: dict = field(default_factory=dict)
    prime_handles: dict = field(default_factory=dict)
    vm: AddressSpace = field(default_factory=AddressSpace)
    contexts: HandleTable = field(default_factory=HandleTable)  # of engine Contexts, by id
    cpu_view: CpuView = field(default_factory=lambda: CpuView(None))
    # Mappings through this file of BOs it no longer has handles to (None: not served by a mount).
    mappings: FileMappings | None = None
    opened_at: float = field(default_factory=time.monotonic)
    ioctl_count: int = 0

    @property
    def authenticated(self) -> bool:
        return self.client.cap_sys_admin

    def is_alive(self) -> bool:
        """Whether the opening process still exists (for the debug listing)."""
        return os.path.exists(f"/proc/{self.client.tgid}")
