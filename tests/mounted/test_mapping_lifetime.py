"""A device-fd mapping keeps its BO as a vma does: the handle may go, the mapping works on
and the memory stays accounted until the mapping's file is gone."""

from __future__ import annotations

import mmap

from userspace.libaccel import Device

PAGES = 4


def test_a_mapping_outlives_the_handle(emudev_mount):
    size = PAGES * mmap.PAGESIZE
    with Device(emudev_mount.node(0)) as dev:
        bo = dev.create_bo(size)
        mapping = bo.map_device()
        mapping[:16] = 5  # faults the first page in
        bo.close()
        assert f"{size:>12}" in emudev_mount.debug("accel0", "gem_objects")
        last = mapping[size - 16:]
        last[:] = 7  # a page first touched after the handle went
        assert (last == 7).all() and (mapping[:16] == 5).all()
        assert "mmap:1" in emudev_mount.debug("accel0", "gem_objects")
        del mapping, last
    assert "total: 0 objects" in emudev_mount.debug("accel0", "gem_objects")

