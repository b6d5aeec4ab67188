"""The driver description, the emulator's struct drm_driver: features and ioctl table.

Importing the handler modules here registers them; the dispatcher then takes every
ioctl that the uapi spec declares for the DRM core and this driver.
"""

from __future__ import annotations

from emudev.driver import params  # noqa: F401  (registers the driver ioctl handlers)
from emudev.drm import core  # noqa: F401  (registers the core ioctl handlers)
from emudev.drm.device import DeviceConfig, DrmDevice
from emudev.drm.ioctl import DrmDispatcher
from emudev.engine import submit  # noqa: F401  (registers the job ioctl handlers)
from emudev.gem import dmabuf, gem, prime  # noqa: F401  (register the GEM, PRIME and dma-buf handlers)
from emudev.sync import sw_sync, sync_file, syncobj_ioctl  # noqa: F401  (register the fence handlers)

DRIVER_FEATURES = frozenset({"compute_accel", "gem", "syncobj", "syncobj_timeline"})


def create_devices(count: int, config: DeviceConfig) -> list[DrmDevice]:
    return [DrmDevice(index=i, config=config, features=DRIVER_FEATURES) for i in range(count)]


def create_dispatcher() -> DrmDispatcher:
    return DrmDispatcher(families=("drm", "emudev"))
