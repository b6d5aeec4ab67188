"""Bug: the same GEM handle is closed twice."""

from emudev.uapi import defs
from userspace.libaccel import Device

EXPECT = ("double-close", "was already closed")

with Device.open(0) as dev:
    bo = dev.create_bo(4096)
    handle = bo.handle
    bo.close()
    try:
        dev.ioctl("DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=handle))  # BUG: closed already
    except OSError as e:
        print("GEM_CLOSE failed:", e)
