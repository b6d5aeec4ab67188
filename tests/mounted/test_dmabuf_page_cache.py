"""dma-buf mappings without passthrough (the path of ordinary users): coherent at DMA_BUF_IOCTL_SYNC."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from emudev.uapi import defs
from userspace.libaccel import Device


@pytest.mark.emudev(args=("--no-passthrough",))
def test_writes_reach_the_bo_at_sync_end_and_reads_see_it_after_sync_start(emudev_mount):
    with Device(emudev_mount.node(0)) as dev, dev.create_bo(3 * 4096) as bo:
        device_view = bo.map_device()
        with bo.export() as dmabuf:
            with dmabuf.cpu_access() as mapped:
                mapped[:] = np.arange(mapped.size, dtype=np.uint8)
            bo.prep(write=False)
            assert np.array_equal(device_view, np.arange(device_view.size, dtype=np.uint8))
            device_view[:4] = [9, 8, 7, 6]
            bo.fini()
            dmabuf.sync(defs.DMA_BUF_SYNC_START | defs.DMA_BUF_SYNC_READ)
            again = dmabuf.map(writable=False)
            assert list(again[:5]) == [9, 8, 7, 6, 4]
            dmabuf.sync(defs.DMA_BUF_SYNC_END | defs.DMA_BUF_SYNC_READ)


@pytest.mark.emudev(args=("--no-passthrough",))
def test_read_and_write_are_refused_as_dma_buf_fops_has_neither(emudev_mount):
    with Device(emudev_mount.node(0)) as dev, dev.create_bo(4096) as bo, bo.export() as dmabuf:
        for attempt in (lambda: os.pread(dmabuf.fd, 16, 0), lambda: os.pwrite(dmabuf.fd, b"x", 0)):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EINVAL
        with dmabuf.cpu_access() as mapped:
            mapped[:3] = [1, 2, 3]
        assert list(bo.map_device()[:3]) == [1, 2, 3]
