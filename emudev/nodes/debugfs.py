"""debug/: read-only text files in the spirit of /sys/kernel/debug/accel/N/.

They are how humans and tools (`emudev status`, tests, later accel-top) look inside
the daemon without a side channel: everything is read through the mount itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from emudev.drm.device import DrmDevice


@dataclass(frozen=True)
class DaemonInfo:
    mountpoint: str
    started: float
    log_path: str
    workers: int


def clients_text(device: DrmDevice) -> str:
    """Like drm_clients_info(): one line per open file."""
    lines = [f"{'command':>20} {'tgid':>7} {'pid':>7} {'uid':>5} a {'ioctls':>8} {'id':>5} name"]
    for f in sorted(device.files(), key=lambda f: f.id):
        c = f.client
        lines.append(f"{c.comm:>20} {c.tgid:>7} {c.pid:>7} {c.uid:>5} {'y' if f.authenticated else 'n'} "
                     f"{f.ioctl_count:>8} {f.id:>5} {f.client_name or '<unset>'}")
    return "\n".join(lines) + "\n"


def gem_objects_text(device: DrmDevice) -> str:
    """Every live BO of the device: who holds it, whether it is exported, and the totals."""
    gem = device.gem
    lines = [f"{'id':>6} {'size':>12} {'handles':>7} {'name':>5} {'exported':>8} {'backed':>6}  holders"]
    objects = gem.live_objects()
    for obj in objects:
        holders = ",".join(f"{k}:{n}" for k, n in sorted(obj.holders().items()))
        lines.append(f"{obj.id:>6} {obj.size:>12} {obj.handle_count:>7} {obj.name:>5} "
                     f"{'yes' if obj.dma_buf else 'no':>8} {'yes' if obj.memory.allocated else 'no':>6}  {holders}")
    lines.append(f"total: {len(objects)} objects, {sum(o.size for o in objects)} bytes; "
                 f"device memory {gem.memory.used} of {gem.memory.capacity} bytes in use")
    return "\n".join(lines) + "\n"


def fences_text(device: DrmDevice) -> str:
    """Every syncobj of every open file: its fence (or timeline head), points and waiters."""
    lines = [f"{'file':>5} {'handle':>6} {'syncobj':>7} {'state':>9} {'point':>8} {'waiters':>7}  fence"]
    for file in sorted(device.files(), key=lambda f: f.id):
        for handle, syncobj in sorted(file.syncobjs.items()):
            fence = syncobj.fence()
            state = "empty" if fence is None else ("signalled" if fence.signaled else "pending")
            lines.append(f"{file.id:>5} {handle:>6} {syncobj.id:>7} {state:>9} {syncobj.query(True):>8} "
                         f"{syncobj.waiters():>7}  {fence!r}")
    return "\n".join(lines) + "\n"


def name_text(device: DrmDevice) -> str:
    return f"emudev dev={device.name} unplugged={'yes' if device.unplugged else 'no'}\n"


def daemon_text(info: DaemonInfo, devices: Sequence[DrmDevice]) -> str:
    """Key: value lines read by `emudev status` and `emudev umount`."""
    rows = {
        "pid": os.getpid(),
        "mountpoint": info.mountpoint,
        "uptime": f"{time.monotonic() - info.started:.1f}s",
        "devices": " ".join(d.name for d in devices),
        "clients": sum(len(d.files()) for d in devices),
        "workers": info.workers,
        "log": info.log_path,
    }
    return "".join(f"{k}: {v}\n" for k, v in rows.items())
