"""GEM handles and object lifetime driven in-process through the dispatcher."""

from __future__ import annotations

import errno
import os

import pytest

from emudev.driver.drv import create_devices, create_dispatcher
from emudev.drm.device import DeviceConfig
from emudev.drm.file import ClientIdentity
from emudev.drm.usermem import UserMemory
from emudev.gem.gem import release_file
from emudev.gem.handles import HandleTable
from emudev.uapi import defs

ROOT = ClientIdentity(pid=os.getpid(), tgid=os.getpid(), uid=0, comm="pytest", cap_sys_admin=True)


@pytest.fixture
def env():
    device = create_devices(1, DeviceConfig(memory_size=1 << 20))[0]
    return device, create_dispatcher()


def ioctl(env, file, name, args):
    _, dispatcher = env
    out = dispatcher.dispatch(file, defs.IOCTLS_BY_NAME[name].cmd, bytes(args), UserMemory(os.getpid()))
    return out.result, type(args).from_bytes(out.data)


def create(env, file, size=4096, flags=defs.DRM_EMUDEV_BO_MAPPABLE):
    result, out = ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_CREATE", defs.drm_emudev_bo_create(size=size, flags=flags))
    assert result == 0
    return out


def test_handle_table_hands_out_the_lowest_free_number():
    table: HandleTable[str] = HandleTable()
    assert [table.insert(x) for x in "abc"] == [1, 2, 3]
    table.remove(2)
    table.remove(1)
    assert table.insert("d") == 1
    assert table.insert("e") == 2
    assert table.insert("f") == 4
    assert table.insert_at(9, "g") and not table.insert_at(9, "h")
    assert [table.insert(x) for x in "ijklm"] == [5, 6, 7, 8, 10]


def test_create_rounds_up_and_accounts_device_memory(env):
    device, _ = env
    file = device.open_file(ROOT)
    out = create(env, file, size=5000)
    assert (out.handle, out.size) == (1, 8192)
    assert device.gem.memory.used == 8192
    result, _ = ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_CREATE", defs.drm_emudev_bo_create(size=1 << 20))
    assert result == -errno.ENOMEM
    assert device.gem.memory.used == 8192 and len(file.objects) == 1


@pytest.mark.parametrize(("size", "flags"), [(0, 0), (4096, 0x4), ((1 << 64) - 1, 0)])
def test_create_rejects_bad_input(env, size, flags):
    device, _ = env
    file = device.open_file(ROOT)
    result, _ = ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_CREATE", defs.drm_emudev_bo_create(size=size, flags=flags))
    assert result == -errno.EINVAL
    assert device.gem.memory.used == 0


def test_close_frees_and_bad_handles_give_the_kernels_errnos(env):
    device, _ = env
    file = device.open_file(ROOT)
    handle = create(env, file).handle
    assert ioctl(env, file, "DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=handle))[0] == 0
    assert device.gem.memory.used == 0 and not device.gem.live_objects()
    assert ioctl(env, file, "DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=handle))[0] == -errno.EINVAL
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=handle))[0] == -errno.ENOENT


def test_info_reports_offsets_and_addresses(env):
    device, _ = env
    file = device.open_file(ROOT)
    a, b = create(env, file).handle, create(env, file, flags=0).handle
    _, ia = ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=a))
    _, ib = ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=b))
    assert ia.mmap_offset >= 1 << 32 and ib.mmap_offset == 0
    assert ia.device_va and ib.device_va and ia.device_va != ib.device_va
    assert ib.flags == 0 and ia.flags == defs.DRM_EMUDEV_BO_MAPPABLE


def test_flink_and_open_share_within_the_device(env):
    device, _ = env
    owner, other = device.open_file(ROOT), device.open_file(ROOT)
    handle = create(env, owner).handle
    result, flink = ioctl(env, owner, "DRM_IOCTL_GEM_FLINK", defs.drm_gem_flink(handle=handle))
    assert result == 0 and flink.name == 1
    assert ioctl(env, owner, "DRM_IOCTL_GEM_FLINK", defs.drm_gem_flink(handle=handle))[1].name == 1
    result, opened = ioctl(env, other, "DRM_IOCTL_GEM_OPEN", defs.drm_gem_open(name=flink.name))
    assert result == 0 and opened.size == 4096
    obj = other.objects.lookup(opened.handle)
    assert obj is owner.objects.lookup(handle) and obj.handle_count == 2
    ioctl(env, owner, "DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=handle))
    ioctl(env, other, "DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=opened.handle))
    assert ioctl(env, other, "DRM_IOCTL_GEM_OPEN", defs.drm_gem_open(name=flink.name))[0] == -errno.ENOENT


def test_change_handle(env):
    device, _ = env
    file = device.open_file(ROOT)
    a, b = create(env, file).handle, create(env, file).handle

    def change(h, new):
        return ioctl(env, file, "DRM_IOCTL_GEM_CHANGE_HANDLE", defs.drm_gem_change_handle(handle=h, new_handle=new))[0]

    assert change(a, b) == -errno.ENOSPC
    assert change(a, a) == 0
    assert change(a, 7) == 0
    assert file.objects.lookup(a) is None and file.objects.lookup(7) is not None
    assert change(99, 5) == -errno.ENOENT


def test_file_release_drops_every_handle(env):
    device, _ = env
    file = device.open_file(ROOT)
    for _ in range(3):
        create(env, file)
    release_file(file)
    assert device.gem.memory.used == 0 and not device.gem.live_objects()


def test_wait_prep_fini_validate(env):
    device, _ = env
    file = device.open_file(ROOT)
    h = create(env, file).handle
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_WAIT", defs.drm_emudev_bo_wait(handle=h))[0] == 0
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_WAIT", defs.drm_emudev_bo_wait(handle=h, pad=1))[0] == -errno.EINVAL
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_WAIT", defs.drm_emudev_bo_wait(handle=9))[0] == -errno.ENOENT
    prep = defs.drm_emudev_bo_prep
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_PREP", prep(handle=h, flags=0))[0] == -errno.EINVAL
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_PREP", prep(handle=h, flags=4))[0] == -errno.EINVAL
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_PREP", prep(handle=h, flags=1))[0] == 0
    fini = defs.drm_emudev_bo_fini
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_FINI", fini(handle=h, pad=1))[0] == -errno.EINVAL
    assert ioctl(env, file, "DRM_IOCTL_EMUDEV_BO_FINI", fini(handle=h))[0] == 0
