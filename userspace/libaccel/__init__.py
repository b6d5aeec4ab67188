"""libaccel: a libdrm-like library over the accel uapi; it talks to devices only through their node."""

from userspace.libaccel.bo import DEVICE_READ_ONLY, MAPPABLE, Bo, DmaBuf
from userspace.libaccel.device import Device, DeviceInfo, Version, find_devices
from userspace.libaccel.fd import claim_fd
from userspace.libaccel.sync import SwSyncTimeline, SyncFile, Syncobj, abs_timeout

__all__ = ["DEVICE_READ_ONLY", "MAPPABLE", "Bo", "Device", "DeviceInfo", "DmaBuf", "SwSyncTimeline", "SyncFile",
           "Syncobj", "Version", "abs_timeout", "claim_fd", "find_devices"]
