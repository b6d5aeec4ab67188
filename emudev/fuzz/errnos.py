"""Which errnos the kernel could return for a request on a file: the fuzzer's oracle.

A request reaches a handler, or is turned away by the routing in front of it, exactly
as the real files route them: the DRM node by ``_IOC_TYPE`` then ``_IOC_NR``
(drm_ioctl()), dma-buf, sync_file and sw_sync files by the whole request number (their
``switch``), an opaque syncobj file not at all. Once a handler is reached, the errnos
the kernel could give are the ones its YAML ``errors:`` lists plus the generic ones
below, which any ioctl can give before or around its handler.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from emudev.uapi import defs
from emudev.uapi.types import IoctlSpec, ioc_nr, ioc_type

# What drm_ioctl() (drivers/gpu/drm/drm_ioctl.c) answers to *any* DRM ioctl, besides what
# the handler documents (errno -> when); the routing (ENOTTY, EINVAL) is applied by route().
DRM_GENERIC: dict[int, str] = {
    # copy_from_user()/copy_to_user() of the argument (drm_ioctl(), or here the FUSE
    # kernel's copy of _IOC_SIZE bytes), or of a user pointer the handler follows.
    errno.EFAULT: "the argument or a user pointer in it cannot be read or written",
    # -ERESTARTSYS / -EAGAIN: any ioctl may be interrupted and must be restartable.
    errno.EINTR: "a signal arrived",
    errno.EAGAIN: "try again",
    # kzalloc() of kdata for a struct larger than the on-stack 128 bytes, or in the handler.
    errno.ENOMEM: "out of memory",
}
# Only where drm_ioctl() would check: drm_dev_is_unplugged() → ENODEV; drm_ioctl_permit()
# → EACCES for DRM_AUTH/DRM_MASTER/DRM_ROOT_ONLY ioctls; drm_core_check_feature() (the
# ioctl's DRIVER_* `requires:`) → EOPNOTSUPP.
UNPLUGGED = errno.ENODEV
DENIED = errno.EACCES
NO_FEATURE = errno.EOPNOTSUPP
GUARDED_PERMISSIONS = frozenset({"auth", "master", "root_only"})
# drm_ioctl(): `if (DRM_IOCTL_TYPE(cmd) != DRM_IOCTL_BASE) return -ENOTTY;` then a number
# outside both tables, or a hole in them, → EINVAL.
FOREIGN_TYPE = errno.ENOTTY
UNKNOWN_NR = errno.EINVAL
# dma_buf_ioctl(), sync_file_ioctl(), sw_sync_ioctl(): `default: return -ENOTTY;`, and a
# file with no unlocked_ioctl (an opaque syncobj file) gets ENOTTY from vfs_ioctl().
UNKNOWN_CMD = errno.ENOTTY
# The same copy faults, signals and allocations, for the non-DRM files.
FILE_GENERIC: dict[int, str] = {
    errno.EFAULT: "the argument or a user pointer in it cannot be read or written",
    errno.EINTR: "a signal arrived",
    errno.ENOMEM: "out of memory",
}

# The files the fuzzer issues requests on, and the families each one dispatches.
FILE_FAMILIES: dict[str, tuple[str, ...]] = {
    "device": ("drm", "emudev"),
    "dma_buf": ("dma_buf",),
    "sync_file": ("sync_file",),
    "sw_sync": ("sw_sync",),
    "syncobj": (),
}


@dataclass(frozen=True)
class Expectation:
    """The handler a request reaches (None when the routing turns it away) and what it may answer."""

    spec: IoctlSpec | None
    errnos: frozenset[int]
    why: str

    def names(self) -> list[str]:
        return sorted(errno_name(e) for e in self.errnos)


def errno_name(value: int) -> str:
    """The name the uapi docs use (EOPNOTSUPP, not its Linux alias ENOTSUP)."""
    return "EOPNOTSUPP" if value == errno.EOPNOTSUPP else errno.errorcode.get(value, str(value))


def errno_value(name: str) -> int:
    value = getattr(errno, name, None)
    if not isinstance(value, int):
        raise ValueError(f"{name} is not an errno")
    return value


def documented(spec: IoctlSpec) -> frozenset[int]:
    """The errnos of the ioctl's YAML `errors:`."""
    return frozenset(errno_value(name) for name, _ in spec.errors)


def generic(spec: IoctlSpec, *, unplugged: bool = False) -> frozenset[int]:
    """What the DRM core or the file's ioctl entry can add to any handler's errnos."""
    if defs.FAMILIES[spec.family].dispatch != "nr":
        return frozenset(FILE_GENERIC)
    found = set(DRM_GENERIC)
    if unplugged:
        found.add(UNPLUGGED)
    if spec.permissions & GUARDED_PERMISSIONS:
        found.add(DENIED)
    if spec.requires:
        found.add(NO_FEATURE)
    return frozenset(found)


def route(kind: str, cmd: int) -> tuple[IoctlSpec | None, int | None, str]:
    """The handler a request reaches on a file of `kind`, or the errno the routing gives."""
    families = FILE_FAMILIES.get(kind, ())
    specs = [spec for spec in defs.IOCTLS if spec.family in families]
    if not specs:
        return None, UNKNOWN_CMD, f"a {kind} file has no ioctls"
    if all(defs.FAMILIES[family].dispatch == "nr" for family in families):
        type_ = defs.FAMILIES[families[0]].type
        if ioc_type(cmd) != type_:
            return None, FOREIGN_TYPE, f"type {ioc_type(cmd):#x} is not {type_:#x}"
        found = next((spec for spec in specs if spec.nr == ioc_nr(cmd)), None)
        if found is None:
            return None, UNKNOWN_NR, f"no ioctl has nr {ioc_nr(cmd):#x}"
        return found, None, f"nr {ioc_nr(cmd):#x} is {found.name}"
    found = next((spec for spec in specs if cmd in spec.cmds), None)
    if found is None:
        return None, UNKNOWN_CMD, f"{cmd:#x} is no {'/'.join(families)} request"
    return found, None, f"{cmd:#x} is {found.name}"


def allowed(kind: str, cmd: int, *, unplugged: bool = False, bad_arg: bool = False) -> Expectation:
    """Every errno a request `cmd` on a file of `kind` could get from the kernel.

    `bad_arg`: the argument pointer itself cannot be accessed. The FUSE kernel copies
    the argument before the daemon routes the request, so EFAULT may then come first
    (drm_ioctl() would route first).
    """
    spec, routed, why = route(kind, cmd)
    if spec is None:
        assert routed is not None
        extra = {errno.EFAULT} if bad_arg else set()
        if unplugged and kind == "device":
            extra.add(UNPLUGGED)
        return Expectation(None, frozenset({routed, *extra}), why)
    return Expectation(spec, documented(spec) | generic(spec, unplugged=unplugged), why)
