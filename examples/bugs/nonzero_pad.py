"""Bug: a struct's pad field is not zeroed."""

from emudev.uapi import defs
from userspace.libaccel import Device

EXPECT = ("uapi-error", "pad must be zero")

with Device.open(0) as dev:
    bo = dev.create_bo(4096)
    args = defs.drm_emudev_bo_wait(handle=bo.handle, pad=0xDEAD)  # BUG: stack garbage in pad
    try:
        dev.ioctl("DRM_IOCTL_EMUDEV_BO_WAIT", args)
    except OSError as e:
        print("BO_WAIT failed:", e)
    bo.close()
