"""The daemon: build the devices and their tree, mount, serve, and unplug cleanly.

Shutdown follows hot-unplug: SIGTERM/SIGINT marks every device unplugged (ioctls on
files still open answer ENODEV) and detaches the mount; the FUSE session keeps
answering until the kernel drops the connection, which happens once the last open
file is closed. No request is left unanswered and no client can hang on us.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from emudev import fuse
from emudev.driver.drv import create_devices, create_dispatcher
from emudev.drm.device import DeviceConfig, DrmDevice
from emudev.nodes.accel import accel_node
from emudev.nodes.debugfs import DaemonInfo, clients_text, daemon_text, name_text
from emudev.nodes.fs import NodeFs
from emudev.nodes.tree import InodeTable, text_file

log = logging.getLogger("emudev.daemon")


@dataclass(frozen=True)
class DaemonConfig:
    mountpoint: str
    devices: int = 1
    device: DeviceConfig = field(default_factory=DeviceConfig)
    workers: int = 2
    log_path: str = ""


def build_tree(devices: list[DrmDevice], info: DaemonInfo) -> InodeTable:
    inodes = InodeTable()
    dispatcher = create_dispatcher()
    accel_dir = inodes.mkdir(inodes.root, "accel")
    debug_dir = inodes.mkdir(inodes.root, "debug")
    inodes.add(debug_dir, text_file("daemon", lambda: daemon_text(info, devices)))
    for device in devices:
        inodes.add(accel_dir, accel_node(device, dispatcher))
        device_debug = inodes.mkdir(debug_dir, device.name)
        inodes.add(device_debug, text_file("clients", lambda d=device: clients_text(d)))
        inodes.add(device_debug, text_file("name", lambda d=device: name_text(d)))
    return inodes


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.mountpoint = os.path.abspath(config.mountpoint)
        self.devices = create_devices(config.devices, config.device)
        info = DaemonInfo(self.mountpoint, time.monotonic(), config.log_path, config.workers)
        self.fs = NodeFs(build_tree(self.devices, info))
        self._stopping = threading.Event()

    def run(self, ready: Callable[[], None]) -> None:
        """Mount, report readiness, serve until the kernel ends the connection."""
        fd = fuse.mount(self.mountpoint, allow_other=os.geteuid() == 0)
        session = fuse.Session(fd, self.fs, workers=self.config.workers)
        server = threading.Thread(target=session.serve, name="fuse-serve", daemon=True)
        server.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())
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
        open_files = len(self.fs.open_files())
        log.info("unplugging: detaching %s (%d open file(s) remain)", self.mountpoint, open_files)
        fuse.unmount(self.mountpoint, lazy=True)
