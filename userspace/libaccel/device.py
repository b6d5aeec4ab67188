"""Opening accel devices and asking them what they are."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
from dataclasses import dataclass

from emudev.uapi import defs
from userspace.libaccel.bo import Bo
from userspace.libaccel.ioctl import drm_ioctl
from userspace.libaccel.job import Context
from userspace.libaccel.sync import Syncobj

MOUNT_ENV = "EMUDEV_MOUNT"


def find_devices(mountpoint: str | None = None) -> list[str]:
    """Node paths, accel0 first: under `mountpoint` (or $EMUDEV_MOUNT), else /dev/accel."""
    base = mountpoint or os.environ.get(MOUNT_ENV)
    directory = os.path.join(base, "accel") if base else "/dev/accel"
    nodes = glob.glob(os.path.join(directory, "accel[0-9]*"))
    return sorted(nodes, key=lambda p: int(os.path.basename(p)[len("accel"):]))


def version_text(value: int) -> str:
    """(major << 16) | minor, the form of the UAPI and ISA version params, as major.minor."""
    return f"{value >> 16}.{value & 0xFFFF}"


def isa_compatible(device_isa: int, needed: int = defs.DRM_EMUDEV_ISA_VERSION) -> bool:
    """Whether a device of ISA `device_isa` runs streams of ISA `needed`: same major, minor not older."""
    return device_isa >> 16 == needed >> 16 and device_isa & 0xFFFF >= needed & 0xFFFF


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patchlevel: int
    name: str
    date: str
    desc: str


@dataclass(frozen=True)
class DeviceInfo:
    path: str
    version: Version
    caps: dict[str, int]
    params: dict[str, int]


_CAPS = ("DRM_CAP_PRIME", "DRM_CAP_TIMESTAMP_MONOTONIC", "DRM_CAP_SYNCOBJ", "DRM_CAP_SYNCOBJ_TIMELINE")


class Device:
    """An open accel node (one drm_file). Use as a context manager or call close()."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC) if fd is None else fd

    @classmethod
    def from_fd(cls, fd: int) -> Device:
        """Adopt an fd of an accel node, e.g. one received over a unix socket; close() closes it."""
        return cls(os.readlink(f"/proc/self/fd/{fd}"), fd)

    @classmethod
    def open(cls, which: str | int = 0, mountpoint: str | None = None) -> Device:
        """Open by node path, or by index among find_devices(mountpoint)."""
        if isinstance(which, str):
            return cls(which)
        nodes = find_devices(mountpoint)
        if which >= len(nodes):
            where = mountpoint or os.environ.get(MOUNT_ENV) or "/dev"
            raise FileNotFoundError(f"no accel{which} under {where} ({len(nodes)} device(s) found)")
        return cls(nodes[which])

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; a device that is gone (ENODEV, ENOTCONN, ECONNABORTED) has released it anyway."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            os.close(fd)
        except OSError as e:
            if e.errno not in (errno.ENODEV, errno.ENOTCONN, errno.ECONNABORTED):
                raise

    def ioctl(self, name: str, args: defs.UapiStruct) -> int:
        return drm_ioctl(self.fd, defs.IOCTLS_BY_NAME[name], args)

    def version(self) -> Version:
        """DRM_IOCTL_VERSION with libdrm's two calls: lengths first, then buffers."""
        v = defs.drm_version()
        self.ioctl("DRM_IOCTL_VERSION", v)
        bufs = {f: ctypes.create_string_buffer(getattr(v, f"{f}_len") + 1) for f in ("name", "date", "desc")}
        for field, buf in bufs.items():
            setattr(v, field, ctypes.addressof(buf))
        self.ioctl("DRM_IOCTL_VERSION", v)
        text = {f: buf.raw[: getattr(v, f"{f}_len")].decode() for f, buf in bufs.items()}
        return Version(v.version_major, v.version_minor, v.version_patchlevel, **text)

    def get_cap(self, capability: int) -> int:
        cap = defs.drm_get_cap(capability=capability)
        self.ioctl("DRM_IOCTL_GET_CAP", cap)
        return cap.value

    def get_param(self, param: int, index: int = 0) -> int:
        p = defs.drm_emudev_param(param=param, index=index)
        self.ioctl("DRM_IOCTL_EMUDEV_GET_PARAM", p)
        return p.value

    def set_client_name(self, name: str) -> None:
        """Name this open file in the device's client list (printable, no spaces, ≤ 64 bytes)."""
        data = name.encode()
        buf = ctypes.create_string_buffer(data, len(data) or 1)
        self.ioctl("DRM_IOCTL_SET_CLIENT_NAME", defs.drm_set_client_name(name_len=len(data),
                                                                         name=ctypes.addressof(buf)))

    def create_bo(self, size: int, flags: int = defs.DRM_EMUDEV_BO_MAPPABLE) -> Bo:
        return Bo.create(self, size, flags)

    def import_dmabuf(self, fd: int) -> Bo:
        """PRIME_FD_TO_HANDLE: a BO of this file for the dma-buf `fd` (the same handle on re-import)."""
        args = defs.drm_prime_handle(fd=fd)
        self.ioctl("DRM_IOCTL_PRIME_FD_TO_HANDLE", args)
        return Bo(self, args.handle)

    def create_syncobj(self, signaled: bool = False) -> Syncobj:
        return Syncobj.create(self, signaled)

    def create_context(self, priority: int = defs.DRM_EMUDEV_PRIORITY_NORMAL) -> Context:
        return Context(self, priority)

    def info(self) -> DeviceInfo:
        caps = {name: self.get_cap(getattr(defs, name)) for name in _CAPS}
        params = {name.removeprefix("DRM_EMUDEV_PARAM_").lower(): self.get_param(value)
                  for name, value in defs.ENUMS["drm_emudev_param_id"].members.items()}
        return DeviceInfo(self.path, self.version(), caps, params)
