"""The DRM dispatcher and core ioctls driven in-process with bytes (no FUSE).

UserMemory points at this very process, so user pointers are real addresses here.
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from emudev.driver.drv import DRIVER_FEATURES, create_devices, create_dispatcher
from emudev.drm.device import DeviceConfig
from emudev.drm.file import ClientIdentity
from emudev.drm.ioctl import IoctlOutcome
from emudev.drm.usermem import UserMemory
from emudev.uapi import defs
from emudev.uapi.types import IOC_READ, IOC_WRITE, ioc

ROOT = ClientIdentity(pid=os.getpid(), tgid=os.getpid(), uid=0, comm="pytest", cap_sys_admin=True)
USER = ClientIdentity(pid=os.getpid(), tgid=os.getpid(), uid=1000, comm="pytest", cap_sys_admin=False)


@pytest.fixture
def device():
    return create_devices(1, DeviceConfig(memory_size=1 << 26))[0]


@pytest.fixture
def dispatcher():
    return create_dispatcher()


def call(dispatcher, file, cmd: int, payload: bytes | ctypes.Structure) -> IoctlOutcome:
    return dispatcher.dispatch(file, cmd, bytes(payload), UserMemory(os.getpid()))


def test_every_ioctl_of_a_provided_feature_has_a_handler(dispatcher):
    for table in (dispatcher.core, dispatcher.driver):
        for entry in table.values():
            if entry.spec.requires <= DRIVER_FEATURES:
                assert entry.handler is not None, entry.spec.name


def test_version_two_call_protocol(device, dispatcher):
    file = device.open_file(ROOT)
    first = call(dispatcher, file, defs.DRM_IOCTL_VERSION, defs.drm_version())
    assert first.result == 0
    v = defs.drm_version.from_bytes(first.data)
    assert (v.name_len, v.date_len, v.desc_len) == (len("emudev"), 1, len(defs.DRIVER["desc"]))
    bufs = [ctypes.create_string_buffer(b"X" * 40, 40) for _ in range(3)]
    v.name, v.date, v.desc = (ctypes.addressof(b) for b in bufs)
    second = defs.drm_version.from_bytes(call(dispatcher, file, defs.DRM_IOCTL_VERSION, v).data)
    assert bufs[0].raw[:7] == b"emudevX"  # no NUL is added
    assert bufs[1].raw[:2] == b"0X"
    assert bufs[2].raw.startswith(defs.DRIVER["desc"].encode())
    assert (second.version_major, second.version_minor) == (defs.DRIVER["major"], defs.DRIVER["minor"])


def test_version_short_buffer_reports_full_length(device, dispatcher):
    file = device.open_file(ROOT)
    buf = ctypes.create_string_buffer(b"....", 4)
    v = defs.drm_version(name_len=3, name=ctypes.addressof(buf))
    out = defs.drm_version.from_bytes(call(dispatcher, file, defs.DRM_IOCTL_VERSION, v).data)
    assert buf.raw == b"emu."
    assert out.name_len == 6


def test_version_bad_pointer_is_efault_null_pointer_is_skipped(device, dispatcher):
    file = device.open_file(ROOT)
    bad = call(dispatcher, file, defs.DRM_IOCTL_VERSION, defs.drm_version(name_len=8, name=0x10))
    assert bad.result == -errno.EFAULT
    null = call(dispatcher, file, defs.DRM_IOCTL_VERSION, defs.drm_version(name_len=8, name=0))
    assert null.result == 0


@pytest.mark.parametrize(("cap", "value"), [
    ("DRM_CAP_TIMESTAMP_MONOTONIC", 1),
    ("DRM_CAP_PRIME", 3),
    ("DRM_CAP_SYNCOBJ", 1),
    ("DRM_CAP_SYNCOBJ_TIMELINE", 1),
])
def test_get_cap_answers_the_accel_caps(device, dispatcher, cap, value):
    out = call(dispatcher, device.open_file(ROOT), defs.DRM_IOCTL_GET_CAP,
               defs.drm_get_cap(capability=getattr(defs, cap), value=77))
    assert out.result == 0
    assert defs.drm_get_cap.from_bytes(out.data).value == value


def test_get_cap_other_caps_need_kms_and_value_is_zeroed(device, dispatcher):
    out = call(dispatcher, device.open_file(ROOT), defs.DRM_IOCTL_GET_CAP,
               defs.drm_get_cap(capability=0x1, value=77))  # DRM_CAP_DUMB_BUFFER
    assert out.result == -errno.EOPNOTSUPP
    assert defs.drm_get_cap.from_bytes(out.data).value == 0


def test_set_client_cap_is_kms_only(device, dispatcher):
    out = call(dispatcher, device.open_file(ROOT), defs.DRM_IOCTL_SET_CLIENT_CAP,
               defs.drm_set_client_cap(capability=1, value=1))
    assert out.result == -errno.EOPNOTSUPP


@pytest.mark.parametrize(("name", "result"), [
    (b"my-client_1", 0),
    (b"x" * 64, 0),
    (b"x" * 65, -errno.EINVAL),
    (b"has space", -errno.EINVAL),
    (b"nul\0inside", -errno.EINVAL),
    (b"tab\t", -errno.EINVAL),
])
def test_set_client_name_rules(device, dispatcher, name, result):
    file = device.open_file(ROOT)
    buf = ctypes.create_string_buffer(name, len(name))
    out = call(dispatcher, file, defs.DRM_IOCTL_SET_CLIENT_NAME,
               defs.drm_set_client_name(name_len=len(name), name=ctypes.addressof(buf)))
    assert out.result == result
    assert file.client_name == (name.decode() if result == 0 else None)


def test_set_client_name_empty_clears_and_bad_pointer_faults(device, dispatcher):
    file = device.open_file(ROOT)
    file.client_name = "old"
    assert call(dispatcher, file, defs.DRM_IOCTL_SET_CLIENT_NAME, defs.drm_set_client_name()).result == 0
    assert file.client_name is None
    bad = call(dispatcher, file, defs.DRM_IOCTL_SET_CLIENT_NAME, defs.drm_set_client_name(name_len=4, name=8))
    assert bad.result == -errno.EFAULT


def test_unknown_numbers_are_einval_and_foreign_types_enotty(device, dispatcher):
    file = device.open_file(ROOT)
    for nr in (0x01, 0x9F, defs.DRM_COMMAND_BASE + 0x3F, 0xFF):
        assert call(dispatcher, file, ioc(IOC_READ | IOC_WRITE, ord("d"), nr, 16), bytes(16)).result == -errno.EINVAL
    tcgets = 0x5401
    assert call(dispatcher, file, tcgets, b"").result == -errno.ENOTTY


def test_handler_is_chosen_by_nr_and_size_comes_from_the_caller(device, dispatcher):
    file = device.open_file(ROOT)
    longer = bytes(defs.drm_get_cap(capability=defs.DRM_CAP_TIMESTAMP_MONOTONIC)) + b"tail-kept"
    cmd = ioc(IOC_READ | IOC_WRITE, ord("d"), 0x0C, len(longer))
    out = call(dispatcher, file, cmd, longer)
    assert out.result == 0
    assert len(out.data) == len(longer)
    assert out.data.endswith(b"tail-kept")
    assert defs.drm_get_cap.from_bytes(out.data).value == 1
    shorter = ioc(IOC_READ | IOC_WRITE, ord("d"), 0x0C, 8)
    short_out = call(dispatcher, file, shorter, longer[:8])
    assert short_out.result == 0
    assert short_out.data == longer[:8]  # the value lies beyond the caller's 8 bytes


def test_copy_back_follows_the_common_direction(device, dispatcher):
    file = device.open_file(ROOT)
    write_only = ioc(IOC_WRITE, ord("d"), 0x0C, 16)
    out = call(dispatcher, file, write_only, defs.drm_get_cap(capability=defs.DRM_CAP_PRIME))
    assert (out.result, out.data) == (0, b"")


def test_flink_and_open_need_authentication(device, dispatcher):
    user_file = device.open_file(USER)
    root_file = device.open_file(ROOT)
    for cmd, struct in ((defs.DRM_IOCTL_GEM_FLINK, defs.drm_gem_flink(handle=1)),
                        (defs.DRM_IOCTL_GEM_OPEN, defs.drm_gem_open(name=1))):
        assert call(dispatcher, user_file, cmd, struct).result == -errno.EACCES
        assert call(dispatcher, root_file, cmd, struct).result == -errno.ENOENT


def test_ioctls_of_a_missing_feature_are_eopnotsupp(dispatcher):
    device = create_devices(1, DeviceConfig())[0]
    device.features = frozenset({"compute_accel", "gem"})
    out = call(dispatcher, device.open_file(USER), defs.DRM_IOCTL_SYNCOBJ_CREATE, defs.drm_syncobj_create())
    assert out.result == -errno.EOPNOTSUPP


def test_get_param(device, dispatcher):
    file = device.open_file(USER)

    def param(p: int, index: int = 0) -> tuple[int, int]:
        out = call(dispatcher, file, defs.DRM_IOCTL_EMUDEV_GET_PARAM, defs.drm_emudev_param(param=p, index=index))
        return out.result, defs.drm_emudev_param.from_bytes(out.data).value

    assert param(defs.DRM_EMUDEV_PARAM_MEMORY_SIZE) == (0, 1 << 26)
    assert param(defs.DRM_EMUDEV_PARAM_DEVICE_INDEX) == (0, 0)
    assert param(defs.DRM_EMUDEV_PARAM_PAGE_SIZE) == (0, os.sysconf("SC_PAGE_SIZE"))
    assert param(0xFFFF)[0] == -errno.EINVAL
    assert param(defs.DRM_EMUDEV_PARAM_DEVICE_ID, index=1)[0] == -errno.EINVAL


def test_unplugged_device_answers_enodev(device, dispatcher):
    file = device.open_file(ROOT)
    device.unplug()
    assert call(dispatcher, file, defs.DRM_IOCTL_GET_CAP, defs.drm_get_cap()).result == -errno.ENODEV
