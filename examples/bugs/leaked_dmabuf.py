"""Bug: a dma-buf descriptor is never closed; the program closes its device and lives on."""

import time

from userspace.libaccel import Device

EXPECT = ("leak", "still holds dma-buf descriptors")

dev = Device.open(0)
bo = dev.create_bo(4096)
leaked = bo.export()  # BUG: never closed
bo.close()
dev.close()
time.sleep(0.5)  # the program goes on with its life, the dma-buf still open
