"""The emulated accel device, the emulator's struct drm_device.

A device owns its open files and knows which DRIVER_* features it has: the core
ioctl code asks `has_feature` exactly where the kernel calls drm_core_check_feature(),
so a feature that is not built yet answers EOPNOTSUPP as the kernel would.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emudev.driver.fault_inject import FaultInjection
from emudev.drm.file import ClientIdentity, DrmFile
from emudev.engine.sched import Scheduler
from emudev.gem.device import GemDevice

if TYPE_CHECKING:
    from emudev.nodes.services import MountServices

DEFAULT_MEMORY_SIZE = 1 << 30
DEFAULT_JOB_TIMEOUT_MS = 500  # as rocket and ethosu


@dataclass(frozen=True)
class DeviceConfig:
    """What `emudev mount` sets per device."""

    memory_size: int = DEFAULT_MEMORY_SIZE
    job_timeout_ms: int = DEFAULT_JOB_TIMEOUT_MS
    sched_seed: int | None = None


@dataclass(eq=False)
class DrmDevice:
    index: int
    config: DeviceConfig = field(default_factory=DeviceConfig)
    features: frozenset[str] = frozenset({"compute_accel"})
    unplugged: bool = False
    gem: GemDevice = field(init=False)
    sched: Scheduler = field(init=False)
    inject: FaultInjection = field(init=False)
    mount: MountServices | None = None  # set by the daemon once the mount exists
    _files: dict[int, DrmFile] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gem = GemDevice(self.name, self.config.memory_size)
        self.inject = FaultInjection()
        if self.config.sched_seed is not None:
            self.inject.apply(f"seed {self.config.sched_seed}", self.unplug)
        self.sched = Scheduler(self.name, self.config.job_timeout_ms, self.inject)

    @property
    def name(self) -> str:
        return f"accel{self.index}"

    def mounted(self) -> MountServices:
        """The mount serving this device; ENODEV for a device driven without one."""
        if self.mount is None:
            raise OSError(errno.ENODEV, "the device is not mounted")
        return self.mount

    def has_feature(self, feature: str) -> bool:
        return feature in self.features

    def open_file(self, client: ClientIdentity) -> DrmFile:
        file = DrmFile(device=self, client=client)
        with self._lock:
            self._files[file.id] = file
        return file

    def release_file(self, file: DrmFile) -> None:
        with self._lock:
            self._files.pop(file.id, None)

    def files(self) -> list[DrmFile]:
        with self._lock:
            return list(self._files.values())

    def unplug(self) -> None:
        """Hot-unplug: from now on ioctls answer ENODEV (drm_dev_unplug) and every pending
        job fence signals ENODEV."""
        self.unplugged = True
        self.sched.unplug()
