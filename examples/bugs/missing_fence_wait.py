"""Bug: the CPU reads a job's output through its mapping before waiting for the job."""

import numpy as np

from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, SwSyncTimeline, Tensor, upload_stream

EXPECT = ("race", "CPU read of BO")

with Device.open(0) as dev, Context(dev) as ctx, SwSyncTimeline.open() as gate:
    out = dev.create_bo(4096)
    start = dev.create_syncobj()
    with gate.fence(1) as fence:
        start.import_sync_file(fence)
    stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=0x3F800000,
                                    dst=Tensor.of(out, (1024,), np.float32))
    cmd, size = upload_stream(dev, stream)
    ctx.submit(cmd, size, bos=[(out, WRITE)], wait=[(start, 0)])
    result = out.map_device()[:16].copy()  # BUG: no out.wait()/prep() before reading
    gate.inc()
    out.wait()
