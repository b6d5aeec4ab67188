"""Bug: a packet writes past the end of its BO."""

import numpy as np

from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, Tensor, upload_stream

EXPECT = ("uapi-error", "is not inside one mapped BO")

with Device.open(0) as dev, Context(dev) as ctx:
    out = dev.create_bo(4096)
    too_long = Tensor.of(out, (2048,), np.float32)  # BUG: 8 KiB into a 4 KiB BO
    stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, dst=too_long)
    cmd, size = upload_stream(dev, stream)
    try:
        ctx.submit(cmd, size, bos=[(out, WRITE)])
    except OSError as e:
        print("submit failed:", e)
