"""libaccel: a libdrm-like library over the accel uapi; it talks to devices only through their node."""

from userspace.libaccel.bo import DEVICE_READ_ONLY, MAPPABLE, Bo, DmaBuf
from userspace.libaccel.device import Device, DeviceInfo, Version, find_devices, isa_compatible, version_text
from userspace.libaccel.fd import claim_fd
from userspace.libaccel.job import (
           READ,
           WRITE,
           CommandStream,
           Context,
           Job,
           JobStatus,
           Tensor,
           activation,
           upload_stream,
)
from userspace.libaccel.sync import SwSyncTimeline, SyncFile, Syncobj, abs_timeout

__all__ = ["DEVICE_READ_ONLY", "MAPPABLE", "READ", "WRITE", "Bo", "CommandStream", "Context", "Device", "DeviceInfo",
           "DmaBuf", "Job", "JobStatus", "SwSyncTimeline", "SyncFile", "Syncobj", "Tensor", "Version", "abs_timeout",
           "activation", "claim_fd", "find_devices", "isa_compatible", "upload_stream", "version_text"]
