"""The daemon: build the devices and their tree, mount, serve, and unplug cleanly.

Shutdown follows hot-unplug: SIGTERM/SIGINT marks every device unplugged (ioctls on
files still open answer ENODEV) and detaches the mount; the FUSE session keeps
answering until the kernel drops the connection, which happens once the last open
file is closed. No request is left unanswered and no client can hang on us.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from emudev import check, fuse
from emudev.driver.drv import create_devices, create_dispatcher
from emudev.drm.cpu_view import Invalidate
from emudev.drm.device import DeviceConfig, DrmDevice
from emudev.drm.file import ClientIdentity
from emudev.gem.vma import MappingHolds
from emudev.nodes.accel import AccelNodes
from emudev.nodes.debugfs import (
    DaemonInfo,
    clients_text,
    daemon_text,
    engines_text,
    faults_text,
    fences_text,
    gem_objects_text,
    inject_file,
    name_text,
)
from emudev.nodes.fs import NodeFs
from emudev.nodes.services import MountServices
from emudev.nodes.tickets import TicketDirectory
from emudev.nodes.tree import DeviceFile, InodeTable, OpenFile, text_file
from emudev.sync import sw_sync
from emudev.trace.coverage import CoverageRecorder
from emudev.trace.reader import trace_file
from emudev.trace.tracer import Tracer

log = logging.getLogger("emudev.daemon")


@dataclass(frozen=True)
class DaemonConfig:
    mountpoint: str
    devices: int = 1
    device: DeviceConfig = field(default_factory=DeviceConfig)
    workers: int = fuse.DEFAULT_WORKERS
    log_path: str = ""
    passthrough: bool = True
    check: bool = False
    coverage: str = ""  # record the uapi used into this file, or into a file of its own in this directory


class MountTree:
    """The files of a mount: accel nodes, fd tickets, debug files."""

    def __init__(self, devices: list[DrmDevice], info: DaemonInfo,
                 invalidate: Callable[[], Invalidate | None]) -> None:
        self.inodes = InodeTable()
        dispatcher = create_dispatcher()
        accel_dir = self.inodes.mkdir(self.inodes.root, "accel")
        self.tickets = TicketDirectory(self.inodes)
        self.inodes.add(self.inodes.root, self.tickets)
        self.inodes.add(self.inodes.root, DeviceFile(name="sw_sync", opener=self._open_sw_sync))
        self.services: MountServices | None = None
        debug_dir = self.inodes.mkdir(self.inodes.root, "debug")
        self.inodes.add(debug_dir, text_file("daemon", lambda: daemon_text(info, devices)))
        self.tracer = Tracer()
        self.inodes.add(debug_dir, trace_file(self.tracer, lambda: self.services))
        if check.active is not None:
            checker = check.active
            self.inodes.add(debug_dir, text_file("checks", checker.text))
        self.accel = [AccelNodes(d, dispatcher, self.inodes, accel_dir, invalidate) for d in devices]
        for device in devices:
            device_debug = self.inodes.mkdir(debug_dir, device.name)
            self.inodes.add(device_debug, text_file("clients", lambda d=device: clients_text(d)))
            self.inodes.add(device_debug, text_file("name", lambda d=device: name_text(d)))
            self.inodes.add(device_debug, text_file("gem_objects", lambda d=device: gem_objects_text(d)))
            self.inodes.add(device_debug, text_file("fences", lambda d=device: fences_text(d)))
            self.inodes.add(device_debug, text_file("engines", lambda d=device: engines_text(d)))
            self.inodes.add(device_debug, text_file("faults", lambda d=device: faults_text(d)))
            self.inodes.add(device_debug, inject_file(device))

    def _open_sw_sync(self, req: fuse.Request, flags: int) -> OpenFile:
        if self.services is None:
            raise OSError(errno.ENODEV, "not mounted yet")
        return sw_sync.Timeline(self.services, ClientIdentity.of(req.pid, req.uid).comm)

    def sweep(self) -> None:
        self.tickets.sweep()
        for nodes in self.accel:
            nodes.sweep()


def _raise_fd_limit() -> None:
    """BOs in use hold a memfd each: allow as many descriptors as the process may have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.mountpoint = os.path.realpath(config.mountpoint)
        if config.check:
            check.enable()
        self.devices = create_devices(config.devices, config.device)
        info = DaemonInfo(self.mountpoint, time.monotonic(), config.log_path, config.workers)
        self.session: fuse.Session | None = None
        self.tree = MountTree(self.devices, info, invalidate=self._invalidator)
        if config.coverage:
            self.tree.tracer.record_coverage(CoverageRecorder(config.coverage))
        self.fs = NodeFs(self.tree.inodes)
        self._stopping = threading.Event()

    def _invalidator(self) -> Invalidate | None:
        session = self.session
        if session is None:
            return None
        return lambda nodeid, offset, length, then: session.notify_inval_inode(nodeid, offset, length, then=then)

    def _attach_mount(self, session: fuse.Session) -> None:
        """Give the devices what they need from the mount, before the first request is served."""
        services = MountServices(
            inodes=self.tree.inodes, tickets=self.tree.tickets, mount_id=fuse.mount_id(self.mountpoint),
            notify_poll=session.notify_poll, invalidate=self._invalidator(),
            backing_open=lambda fd: session.backing_open(fd) if session.wait_initialised().passthrough else None,
            backing_close=session.backing_close, mappings=MappingHolds(fuse.mount_device(self.mountpoint)))
        self.tree.services = services
        self.tree.inodes.on_unlink = lambda parent, name: session.notify_inval_entry(parent, name.encode())
        for device in self.devices:
            device.mount = services
            device.sched.defer = fuse.after_reply

    def _janitor(self) -> None:
        while not self._stopping.wait(0.5):
            self.tree.sweep()

    def run(self, ready: Callable[[], None]) -> None:
        """Mount, report readiness, serve until the kernel ends the connection."""
        root = os.geteuid() == 0
        _raise_fd_limit()
        fd = fuse.mount(self.mountpoint, allow_other=root)
        session = self.session = fuse.Session(fd, self.fs, workers=self.config.workers,
                                              passthrough=root and self.config.passthrough, max_readahead=0)
        self._attach_mount(session)
        # Before the first request: once a node answers, a SIGTERM must unplug, not kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())
        server = threading.Thread(target=session.serve, name="fuse-serve", daemon=True)
        server.start()
        session.wait_initialised()
        threading.Thread(target=self._janitor, name="janitor", daemon=True).start()
        log.info("serving %d device(s) at %s", len(self.devices), self.mountpoint)
        ready()
        while server.is_alive():
            server.join(0.5)
        session.close()
        log.info("connection closed; daemon exits")

    def stop(self) -> None:
        """Unplug every device and detach the mount; open files see ENODEV until closed."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for device in self.devices:
            device.unplug()
        if self.tree.services is not None:
            self.tree.services.pending.cancel_all(errno.ENODEV)
        open_files = len(self.fs.open_files())
        log.info("unplugging: detaching %s (%d open file(s) remain)", self.mountpoint, open_files)
        fuse.unmount(self.mountpoint, lazy=True)
