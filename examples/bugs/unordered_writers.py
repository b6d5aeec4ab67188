"""Bug: two contexts write the same bytes with no dependency between their jobs."""

import numpy as np

from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, SwSyncTimeline, Tensor, upload_stream

EXPECT = ("race", "two jobs write")

with Device.open(0) as dev, Context(dev) as a, Context(dev) as b, SwSyncTimeline.open() as gate:
    out = dev.create_bo(4096)
    start = dev.create_syncobj()
    with gate.fence(1) as fence:
        start.import_sync_file(fence)
    stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, dst=Tensor.of(out, (64,), np.float32))
    cmd, size = upload_stream(dev, stream)
    a.submit(cmd, size, bos=[(out, WRITE)], wait=[(start, 0)], flags=defs.DRM_EMUDEV_SUBMIT_NO_IMPLICIT)
    b.submit(cmd, size, bos=[(out, WRITE)], flags=defs.DRM_EMUDEV_SUBMIT_NO_IMPLICIT)  # BUG: no wait on a's job
    gate.inc()
    out.wait()
