"""Bug: the CPU writes a BO through its device-fd mapping and submits a job reading it
without ending the CPU access (BO_FINI), so the device may see stale data."""

import numpy as np

from emudev.uapi import defs
from userspace.libaccel import READ, WRITE, CommandStream, Context, Device, Tensor, upload_stream

EXPECT = ("cpu-access", "without ending the access with BO_FINI")

with Device.open(0) as dev, Context(dev) as ctx:
    src, dst = dev.create_bo(4096), dev.create_bo(4096)
    src.map_device()[:4096] = 1  # BUG: no src.prep() ... src.fini() around the write
    stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=Tensor.of(src, (1024,), np.float32),
                                    dst=Tensor.of(dst, (1024,), np.float32))
    cmd, size = upload_stream(dev, stream)
    ctx.submit(cmd, size, bos=[(src, READ), (dst, WRITE)])
    dst.wait()
