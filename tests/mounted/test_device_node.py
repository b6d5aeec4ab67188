"""The accel node as clients see it: real daemon process, real ioctl(2), fork, fd passing."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import time

import pytest

from emudev.uapi import defs
from userspace.libaccel import Device, find_devices

pytestmark = pytest.mark.usefixtures("emudev_shared_mount")


def test_nodes_are_at_mountpoint_accel_accelN(emudev_shared_mount):
    nodes = find_devices(emudev_shared_mount.mountpoint)
    assert nodes == [emudev_shared_mount.node(0), emudev_shared_mount.node(1)]
    assert all(stat.S_ISREG(os.stat(n).st_mode) for n in nodes)


def test_version_caps_params(dev, emudev_shared_mount):
    info = dev.info()
    assert (info.version.name, info.version.date) == ("emudev", "0")
    assert info.caps == {"DRM_CAP_PRIME": 3, "DRM_CAP_TIMESTAMP_MONOTONIC": 1,
                         "DRM_CAP_SYNCOBJ": 1, "DRM_CAP_SYNCOBJ_TIMELINE": 1}
    with Device(emudev_shared_mount.node(1)) as second:
        assert second.get_param(defs.DRM_EMUDEV_PARAM_DEVICE_INDEX) == 1


def test_errors_are_oserrors_with_the_kernel_errno(dev):
    with pytest.raises(OSError) as e:
        dev.get_param(0xFFFF)
    assert e.value.errno == errno.EINVAL
    assert "DRM_IOCTL_EMUDEV_GET_PARAM" in str(e.value)
    with pytest.raises(OSError) as e:
        dev.get_cap(0x1)
    assert e.value.errno == errno.EOPNOTSUPP


def test_error_still_copies_the_struct_back(dev):
    buf = bytearray(struct.pack("<QQ", 0x1, 99))  # DRM_CAP_DUMB_BUFFER: EOPNOTSUPP, value zeroed first
    with pytest.raises(OSError):
        fcntl.ioctl(dev.fd, defs.DRM_IOCTL_GET_CAP, buf, True)
    assert struct.unpack("<QQ", buf) == (0x1, 0)


def test_a_shorter_struct_is_zero_extended(dev):
    small = (defs.DRM_IOCTL_GET_CAP & ~(0x3FFF << 16)) | (8 << 16)
    buf = bytearray(struct.pack("<Q", defs.DRM_CAP_PRIME))
    assert fcntl.ioctl(dev.fd, small, buf, True) == 0
    assert struct.unpack("<Q", buf) == (defs.DRM_CAP_PRIME,)


def test_not_a_tty_and_unknown_numbers(dev):
    assert not os.isatty(dev.fd)
    with pytest.raises(OSError) as e:
        fcntl.ioctl(dev.fd, (3 << 30) | (16 << 16) | (ord("d") << 8) | 0x01, bytearray(16), True)
    assert e.value.errno == errno.EINVAL


def test_bad_user_pointer_is_efault(dev):
    v = defs.drm_version(name_len=16, name=0x1000)
    with pytest.raises(OSError) as e:
        fcntl.ioctl(dev.fd, defs.DRM_IOCTL_VERSION, v, True)
    assert e.value.errno == errno.EFAULT


def test_write_is_refused_and_poll_has_no_events(dev):
    with pytest.raises(OSError) as e:
        os.write(dev.fd, b"x")
    assert e.value.errno == errno.EINVAL
    p = select.poll()
    p.register(dev.fd, select.POLLIN)
    assert p.poll(0) == []


def test_nonblocking_read_has_no_events(dev):
    """drm_read() with an empty event list and O_NONBLOCK: EAGAIN, whatever the offset."""
    fcntl.fcntl(dev.fd, fcntl.F_SETFL, fcntl.fcntl(dev.fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    for offset in (0, 1 << 32):
        with pytest.raises(BlockingIOError):
            os.pread(dev.fd, 4096, offset)


class _Interrupted(Exception):
    pass


def test_blocking_read_waits_until_a_signal(dev):
    """drm_read() sleeps until an event or a signal: the read ends only when SIGALRM interrupts it,
    and the file works on afterwards."""
    def interrupt(signum, frame):
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(_Interrupted):
            os.read(dev.fd, 4096)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started >= 0.3
    assert dev.get_cap(defs.DRM_CAP_PRIME) == 3


def _clients(mount, index=0):
    return mount.debug(f"accel{index}", "clients").splitlines()[1:]


def test_clients_debug_file_lists_open_files(emudev_shared_mount):
    with Device(emudev_shared_mount.node(0)) as d:
        d.set_client_name("listing-test")
        rows = [r for r in _clients(emudev_shared_mount) if r.endswith("listing-test")]
        assert len(rows) == 1
        assert str(os.getpid()) in rows[0].split()
    assert not any(r.endswith("listing-test") for r in _clients(emudev_shared_mount))


def test_forked_child_shares_the_open_file(emudev_shared_mount, dev):
    dev.set_client_name("parent")
    pid = os.fork()
    if pid == 0:
        try:
            dev.set_client_name("renamed-by-child")
            os._exit(0 if dev.get_cap(defs.DRM_CAP_PRIME) == 3 else 1)
        except BaseException:
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0
    assert any(r.endswith("renamed-by-child") for r in _clients(emudev_shared_mount))


def test_fd_passed_over_unix_socket_is_the_same_file(emudev_shared_mount, dev):
    dev.set_client_name("sender")
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            left.close()
            _, fds, _, _ = socket.recv_fds(right, 1, 1)
            with Device.from_fd(fds[0]) as received:
                received.set_client_name("receiver")
            os._exit(0)
        except BaseException:
            os._exit(2)
    right.close()
    socket.send_fds(left, [b"x"], [dev.fd])
    assert os.waitpid(pid, 0)[1] == 0
    left.close()
    assert any(r.endswith("receiver") for r in _clients(emudev_shared_mount))
    assert not any(r.endswith("sender") for r in _clients(emudev_shared_mount))


def _as_nobody(fn):
    """Run fn() in a child that dropped root (uid/gid 65534); return its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_flink_and_open_are_root_only_on_accel_nodes(emudev_shared_mount, dev):
    if os.geteuid() != 0:
        pytest.skip("needs root to compare a privileged and an unprivileged client")
    node = emudev_shared_mount.node(0)

    def unprivileged_flink() -> int:
        with Device(node) as d:
            try:
                d.ioctl("DRM_IOCTL_GEM_FLINK", defs.drm_gem_flink(handle=1))
            except OSError as e:
                return e.errno
        return 0

    assert _as_nobody(unprivileged_flink) == errno.EACCES
    with pytest.raises(OSError) as e:
        dev.ioctl("DRM_IOCTL_GEM_FLINK", defs.drm_gem_flink(handle=1))
    assert e.value.errno == errno.ENOENT


def test_system_libdrm_talks_to_the_node(emudev_shared_mount):
    path = ctypes.util.find_library("drm")
    if path is None:
        pytest.skip("libdrm2 is not installed (Debian package libdrm2)")
    libdrm = ctypes.CDLL(path, use_errno=True)

    class DrmVersion(ctypes.Structure):
        _fields_ = [("version_major", ctypes.c_int), ("version_minor", ctypes.c_int),
                    ("version_patchlevel", ctypes.c_int), ("name_len", ctypes.c_int), ("name", ctypes.c_char_p),
                    ("date_len", ctypes.c_int), ("date", ctypes.c_char_p),
                    ("desc_len", ctypes.c_int), ("desc", ctypes.c_char_p)]

    libdrm.drmGetVersion.restype = ctypes.POINTER(DrmVersion)
    libdrm.drmGetVersion.argtypes = [ctypes.c_int]
    libdrm.drmFreeVersion.argtypes = [ctypes.POINTER(DrmVersion)]
    libdrm.drmGetCap.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)]
    fd = os.open(emudev_shared_mount.node(0), os.O_RDWR)
    try:
        version = libdrm.drmGetVersion(fd)
        assert version
        v = version.contents
        assert (v.name, v.date, v.desc) == (b"emudev", b"0", defs.DRIVER["desc"].encode())
        assert v.version_major == defs.DRIVER["major"]
        libdrm.drmFreeVersion(version)
        value = ctypes.c_uint64(0)
        assert libdrm.drmGetCap(fd, defs.DRM_CAP_PRIME, ctypes.byref(value)) == 0
        assert value.value == 3
        assert libdrm.drmGetCap(fd, 0x1, ctypes.byref(value)) == -1
        assert ctypes.get_errno() == errno.EOPNOTSUPP
    finally:
        os.close(fd)
