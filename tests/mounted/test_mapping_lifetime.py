"""A CPU mapping keeps its BO, as the kernel's vma does.

After the last handle and the last dma-buf fd are closed, a mapping's pages stay the
BO's: readable, writable, counted in device memory and listed as held. Once
munmap()ed, the BO goes and its memory returns to the device.
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from forking import assert_sigbus, touch_in_grandchild
from gem_debug import gem_objects, idle, wait_gem

from userspace.libaccel import Bo, Device

PAGE = mmap.PAGESIZE
SWEEP_TIMEOUT = 5.0  # the daemon looks for mappings again every half second


@pytest.fixture
def dev(emudev_mount):
    with Device(emudev_mount.node(0)) as d:
        yield d


def pattern(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def map_device(bo: Bo) -> mmap.mmap:
    return mmap.mmap(bo.device.fd, bo.size, mmap.MAP_SHARED, offset=bo.mmap_offset)


def written_through_device_fd(bo: Bo, data: bytes) -> mmap.mmap:
    """A device-fd mapping of `bo` holding `data`, its pages written back and dropped by FINI,
    so that touching it again faults in from the daemon."""
    mm = map_device(bo)
    bo.prep()
    mm[:] = data
    bo.fini()
    return mm


def assert_held_by_mapping(mount, size: int) -> None:
    state = gem_objects(mount)
    row = state.by_size(size)
    assert row is not None, f"the BO went while mapped:\n{state.text}"
    assert row.handles == 0 and row.holders, state.text
    assert state.used == size, state.text


def test_device_fd_mapping_outlives_the_handle(emudev_mount, dev):
    size = 5 * PAGE
    bo = dev.create_bo(size)
    data = pattern(size, 1)
    mm = written_through_device_fd(bo, data)
    bo.close()
    assert_held_by_mapping(emudev_mount, size)
    assert gem_objects(emudev_mount).by_size(size).holders == {"mapping": 1}
    assert mm[:] == data
    mm[:PAGE] = bytes(PAGE)
    assert mm[:PAGE] == bytes(PAGE) and mm[PAGE:] == data[PAGE:]
    mm.close()
    wait_gem(emudev_mount, idle, timeout=SWEEP_TIMEOUT)


def test_dma_buf_mapping_outlives_fd_and_handle(emudev_mount, dev):
    size = 3 * PAGE
    bo = dev.create_bo(size)
    buf = bo.export()
    mm = mmap.mmap(buf.fd, size)
    data = pattern(size, 2)
    mm[:] = data
    buf.close()
    bo.close()
    assert_held_by_mapping(emudev_mount, size)
    assert mm[:] == data
    mm[:4] = b"late"
    assert mm[:4] == b"late"
    mm.close()
    wait_gem(emudev_mount, idle, timeout=SWEEP_TIMEOUT)


def test_bo_unmapped_before_its_handle_goes_with_the_handle(emudev_mount, dev):
    bo = dev.create_bo(2 * PAGE)
    written_through_device_fd(bo, pattern(bo.size, 3)).close()
    bo.close()
    wait_gem(emudev_mount, idle, timeout=SWEEP_TIMEOUT)


def test_a_kept_bo_is_not_mappable_again(emudev_mount, dev):
    """The mapping keeps the BO for itself: once it is gone, a new mapping of the offset faults."""
    size = 4 * PAGE
    bo = dev.create_bo(size)
    mm = written_through_device_fd(bo, pattern(size, 4))
    offset = bo.mmap_offset
    bo.close()
    assert_held_by_mapping(emudev_mount, size)
    mm.close()
    wait_gem(emudev_mount, idle, timeout=SWEEP_TIMEOUT)
    again = mmap.mmap(dev.fd, size, mmap.MAP_SHARED, offset=offset)
    assert_sigbus(touch_in_grandchild(again, 0))
    again.close()
