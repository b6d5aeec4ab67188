"""debug/: read-only text files in the spirit of /sys/kernel/debug/accel/N/.

They are how humans and tools (`emudev status`, tests, later accel-top) look inside
the daemon without a side channel: everything is read through the mount itself.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass

from emudev import trace
from emudev.driver.fault_inject import InjectError
from emudev.drm.device import DrmDevice
from emudev.engine.program import ENGINE_NAMES
from emudev.fuse import Request
from emudev.nodes.tree import DeviceFile, OpenFile


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
        held = obj.holders()
        holders = ",".join(f"{k}:{n}" for k, n in sorted(held.items()))
        exported = obj.dma_buf is not None or "dmabuf" in held  # a dma-buf outlives the handles' cache of it
        lines.append(f"{obj.id:>6} {obj.size:>12} {obj.handle_count:>7} {obj.name:>5} "
                     f"{'yes' if exported else 'no':>8} {'yes' if obj.memory.allocated else 'no':>6}  {holders}")
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


def engines_text(device: DrmDevice) -> str:
    """The NPU's load: per engine, per client, per context queue, and job totals."""
    sched = device.sched
    engines = sched.streamer.engines
    lines = [f"{'engine':>6} {'busy_ms':>10} {'packets':>8}  busy_ms by file"]
    for number, name in sorted(ENGINE_NAMES.items()):
        engine = engines.get(number)
        busy = engine.busy_ns if engine else 0
        by_file = " ".join(f"{f}:{ns / 1e6:.1f}" for f, ns in sorted(engine.busy_by_file.items())) if engine else ""
        lines.append(f"{name:>6} {busy / 1e6:>10.1f} {engine.packets if engine else 0:>8}  {by_file}")
    lines.append(f"{'file':>6} {'ctx':>4} {'prio':>4} {'queued':>6} {'submitted':>9} {'banned':>6}")
    for file in sorted(device.files(), key=lambda f: f.id):
        for _, ctx in sorted(file.contexts.items()):
            lines.append(f"{file.id:>6} {ctx.id:>4} {ctx.priority:>4} {len(ctx.queue):>6} {ctx.submitted:>9} "
                         f"{'yes' if ctx.banned else 'no':>6}")
    running = sched.running
    lines.append(f"jobs: completed {sched.completed}, failed {sched.failed}, queued {sched.queued()}, "
                 f"running {running.describe() if running else 'none'}")
    return "\n".join(lines) + "\n"


def faults_text(device: DrmDevice) -> str:
    """The last faults the engines took, oldest first."""
    lines = [f"{'time_ns':>16} {'engine':>6} {'packet':>6} {'va':>18}  job: reason"]
    for record in device.sched.faults:
        fault = record.fault
        lines.append(f"{record.time_ns:>16} {ENGINE_NAMES[fault.engine]:>6} {fault.packet:>6} {fault.va:>#18x}  "
                     f"{record.job}: {fault.reason}")
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
        "trace": tracer.describe() if (tracer := trace.active) is not None else "off",
    }
    return "".join(f"{k}: {v}\n" for k, v in rows.items())


class InjectFile(OpenFile):
    """debug/accelN/inject: reads show what is injected, each written line is a command."""

    def __init__(self, device: DrmDevice) -> None:
        self.device = device

    def read(self, req: Request, offset: int, size: int) -> bytes:
        return self.device.inject.text().encode()[offset:offset + size]

    def write(self, req: Request, offset: int, data: memoryview) -> int:
        for line in bytes(data).decode(errors="replace").splitlines():
            try:
                self.device.inject.apply(line, self.device.unplug)
            except InjectError as e:
                raise OSError(errno.EINVAL, str(e)) from None
        return len(data)


def inject_file(device: DrmDevice) -> DeviceFile:
    return DeviceFile(name="inject", mode=stat.S_IFREG | 0o600, opener=lambda req, flags: InjectFile(device))
