"""Bug: a job writes a BO created device-read-only (e.g. uploaded weights)."""

import numpy as np

from emudev.uapi import defs
from userspace.libaccel import DEVICE_READ_ONLY, MAPPABLE, WRITE, CommandStream, Context, Device, Tensor, upload_stream

EXPECT = ("uapi-error", "which is device read-only")

with Device.open(0) as dev, Context(dev) as ctx:
    weights = dev.create_bo(4096, MAPPABLE | DEVICE_READ_ONLY)
    stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL,
                                    dst=Tensor.of(weights, (16,), np.float32))  # BUG: the device may not write it
    cmd, size = upload_stream(dev, stream)
    try:
        ctx.submit(cmd, size, bos=[(weights, WRITE)])
    except OSError as e:
        print("submit failed:", e)
