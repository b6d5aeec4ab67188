"""libaccel: a libdrm-like library over the accel uapi; it talks to devices only through their node."""

from userspace.libaccel.device import Device, DeviceInfo, Version, find_devices

__all__ = ["Device", "DeviceInfo", "Version", "find_devices"]
