"""The ioctl dispatcher, the emulator's drm_ioctl().

Handlers are registered by ioctl name; the tables that route a request are built from
the uapi spec (emudev/uapi), so numbers, sizes and permissions exist only there. The
order of checks and the size rules copy drivers/gpu/drm/drm_ioctl.c:

* unplugged device → ENODEV; a type byte other than 'd' → ENOTTY;
* the handler is chosen by _IOC_NR alone: core table below DRM_COMMAND_BASE and from
  DRM_COMMAND_END, driver table in between; no entry → EINVAL;
* the argument size is the caller's _IOC_SIZE; short input is zero-extended to the
  kernel's size, and the caller's size is copied back even when the handler fails;
* drm_ioctl_permit() → EACCES; a DRIVER_* feature the ioctl needs but the device lacks
  → EOPNOTSUPP.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from emudev import check, trace
from emudev.drm.completion import Completion
from emudev.drm.file import DrmFile
from emudev.drm.usermem import UserMemory
from emudev.uapi import defs
from emudev.uapi.types import IOC_READ, IOC_WRITE, IoctlSpec, UapiStruct, ioc_dir, ioc_nr, ioc_size, ioc_type

log = logging.getLogger("emudev.ioctl")

Handler = Callable[[DrmFile, UapiStruct, UserMemory], int | Completion]

DRM_COMMAND_END = 0xA0
_handlers: dict[str, Handler] = {}


def ioctl_handler(name: str) -> Callable[[Handler], Handler]:
    """Register the function that implements the ioctl `name` (its C macro name)."""
    if name not in defs.IOCTLS_BY_NAME:
        raise KeyError(f"{name} is not declared in the uapi spec")

    def register(fn: Handler) -> Handler:
        if name in _handlers:
            raise KeyError(f"{name} has two handlers")
        _handlers[name] = fn
        return fn

    return register


@dataclass(frozen=True, slots=True)
class IoctlEntry:
    """A row of the table. `handler` is None for an ioctl of a DRIVER_* feature this
    emulator does not provide: like the kernel's handlers for it, it answers EOPNOTSUPP.
    The permission flags and required features are unpacked once here because every
    request reads them; `restricted` says whether drm_ioctl_permit() has anything to check."""

    spec: IoctlSpec
    handler: Handler | None
    needs_root: bool
    needs_auth: bool
    master_only: bool
    restricted: bool
    requires: frozenset[str]
    struct: type[UapiStruct]
    size: int
    dir: int

    @classmethod
    def of(cls, spec: IoctlSpec, handler: Handler | None) -> IoctlEntry:
        p = spec.permissions
        needs_root, needs_auth, master_only = "root_only" in p, "auth" in p, "master" in p
        return cls(spec, handler, needs_root, needs_auth, master_only, needs_root or needs_auth or master_only,
                   spec.requires, spec.struct, spec.size, spec.dir)


@dataclass(frozen=True, slots=True)
class Route:
    """What drm_ioctl() derives from one request number: the entry, the caller's size in
    each direction both sides agree on, and the size of kdata (the largest of those and
    the kernel's struct). `own_kdata` marks the usual case where kdata is exactly the
    kernel's struct and the caller sends all of it or nothing: the struct can then be
    kdata itself, which is much cheaper than laying ctypes over a bytearray."""

    entry: IoctlEntry
    in_size: int
    out_size: int
    ksize: int
    own_kdata: bool

    @classmethod
    def of(cls, entry: IoctlEntry, cmd: int) -> Route:
        size = ioc_size(cmd)
        both = ioc_dir(cmd) & entry.dir
        in_size = size if both & IOC_WRITE else 0
        out_size = size if both & IOC_READ else 0
        ksize = max(in_size, out_size, entry.size)
        return cls(entry, in_size, out_size, ksize, ksize == entry.size and in_size in (0, ksize))

    def copy_in(self, in_data: bytes | memoryview) -> tuple[Kdata, UapiStruct]:
        """kdata with the caller's bytes, zero-extended, and the argument struct over it."""
        struct = self.entry.struct
        if self.own_kdata:
            args = struct.from_buffer_copy(in_data) if self.in_size else struct()
            return args, args
        kdata = bytearray(self.ksize)
        if self.in_size:
            kdata[:self.in_size] = in_data[:self.in_size]
        return kdata, struct.from_buffer(kdata)


Kdata = bytearray | UapiStruct
"""drm_ioctl()'s kernel copy of the argument: a buffer the struct lies over, or the struct itself."""


@dataclass(slots=True)
class IoctlOutcome:
    """What goes back to the caller: the ioctl's return value (or -errno) and the struct bytes.

    With `later` set the handler has not finished: the reply is `later`'s result and
    `finish()`'s bytes, once `later` completes.
    """

    result: int
    data: bytes
    later: Completion | None = None
    kdata: Kdata | None = None
    out_size: int = 0

    def finish(self) -> bytes:
        assert self.kdata is not None
        return bytes(self.kdata)[: self.out_size]


class DrmDispatcher:
    """Routes DRM ioctls of one device's open files to their handlers."""

    def __init__(self, families: Iterable[str] = ("drm", "emudev")) -> None:
        self.core: dict[int, IoctlEntry] = {}
        self.driver: dict[int, IoctlEntry] = {}
        for spec in defs.IOCTLS:
            if spec.family in families:
                table = self.driver if defs.DRM_COMMAND_BASE <= spec.nr < DRM_COMMAND_END else self.core
                table[spec.nr] = IoctlEntry.of(spec, _handlers.get(spec.name))
        # The routes of the request numbers real headers use, decoded once; others on each call.
        self._routes: dict[int, Route] = {}
        for entry in (*self.core.values(), *self.driver.values()):
            for cmd in entry.spec.cmds:
                route = self.route(cmd)
                if isinstance(route, Route):
                    self._routes[cmd] = route

    def lookup(self, nr: int) -> IoctlEntry | None:
        table = self.driver if defs.DRM_COMMAND_BASE <= nr < DRM_COMMAND_END else self.core
        return table.get(nr)

    def route(self, cmd: int) -> Route | int:
        """drm_ioctl()'s decoding of `cmd`: its route, or the errno of a foreign type
        (ENOTTY) or of a number without an entry (EINVAL)."""
        if ioc_type(cmd) != defs.DRM_IOCTL_BASE:
            return errno.ENOTTY
        entry = self.lookup(ioc_nr(cmd))
        if entry is None:
            return errno.EINVAL
        return Route.of(entry, cmd)

    def dispatch(self, file: DrmFile, cmd: int, in_data: bytes | memoryview, user: UserMemory) -> IoctlOutcome:
        """Run one ioctl as drm_ioctl() would; never raises for bad input. Traced while
        someone traces (`emudev trace`) or records coverage: otherwise one test is all it costs."""
        tracer = trace.active
        if tracer is not None:
            return tracer.drm_ioctl(self._dispatch, file, cmd, in_data, user)
        return self._dispatch(file, cmd, in_data, user)

    def _dispatch(self, file: DrmFile, cmd: int, in_data: bytes | memoryview, user: UserMemory) -> IoctlOutcome:
        """drm_ioctl() itself.

        The handler works on `kdata` in place, so bytes the caller sent beyond the
        kernel's struct come back unchanged, as with the kernel's kdata buffer.
        """
        file.ioctl_count += 1
        if file.device.unplugged:
            return IoctlOutcome(-errno.ENODEV, b"")
        route = self._routes.get(cmd) or self.route(cmd)
        if isinstance(route, int):
            return IoctlOutcome(-route, b"")
        kdata, args = route.copy_in(in_data)
        result = self._call(route.entry, file, args, user)
        if isinstance(result, Completion):
            return IoctlOutcome(0, b"", later=result, kdata=kdata, out_size=route.out_size)
        return IoctlOutcome(result, bytes(kdata)[: route.out_size])

    def _call(self, entry: IoctlEntry, file: DrmFile, args: UapiStruct, user: UserMemory) -> int | Completion:
        if entry.restricted and _denied(entry, file):
            return -errno.EACCES
        if entry.requires and not entry.requires <= file.device.features:
            return -errno.EOPNOTSUPP
        if entry.handler is None:
            log.error("%s: the device has its features but no handler", entry.spec.name)
            return -errno.EINVAL
        try:
            return entry.handler(file, args, user)
        except OSError as e:
            if check.active is not None:
                check.active.ioctl_failed(file, entry.spec.name, e.errno or errno.EINVAL, e.strerror or "",
                                          _handles(args))
            return -(e.errno or errno.EINVAL)
        except Exception:
            log.exception("%s failed", entry.spec.name)
            return -errno.EINVAL


def _handles(args: UapiStruct) -> list[int]:
    """The GEM handles an argument names, for the use-after-close check."""
    return [getattr(args, spec.name) for spec in args._specs_ if spec.name in ("handle", "cmd_handle")]


def _denied(entry: IoctlEntry, file: DrmFile) -> bool:
    """drm_ioctl_permit() for an accel file: not a render client, never the master."""
    return (entry.master_only
            or (entry.needs_root and not file.client.cap_sys_admin)
            or (entry.needs_auth and not file.authenticated))


class CommandTable:
    """Ioctls of a non-DRM file (dma-buf, sync_file, sw_sync): matched on the whole
    request number as those drivers' switch statements do; anything else is ENOTTY."""

    def __init__(self, family: str) -> None:
        self.family = defs.FAMILIES[family]
        self._entries: dict[int, tuple[IoctlSpec, Handler]] = {}
        for spec in defs.IOCTLS:
            if spec.family == family and spec.name in _handlers:
                for cmd in spec.cmds:
                    self._entries[cmd] = (spec, _handlers[spec.name])

    def dispatch(self, owner: object, cmd: int, arg: int, in_data: bytes | memoryview,
                 user: UserMemory) -> IoctlOutcome:
        """`arg` is the raw ioctl argument, which by-value requests (DMA_BUF_SET_NAME) use as is."""
        tracer = trace.active
        if tracer is not None:
            return tracer.command_ioctl(self._dispatch, owner, cmd, arg, in_data, user)
        return self._dispatch(owner, cmd, arg, in_data, user)

    def _dispatch(self, owner: object, cmd: int, arg: int, in_data: bytes | memoryview,
                  user: UserMemory) -> IoctlOutcome:
        entry = self._entries.get(cmd)
        if entry is None:
            return IoctlOutcome(-errno.ENOTTY, b"")
        spec, handler = entry
        size = ioc_size(cmd)
        kdata = bytearray(max(size, spec.size))
        if spec.by_value:
            kdata[:spec.size] = arg.to_bytes(spec.size, "little")
        else:
            kdata[:size] = in_data[:size]
        try:
            result = handler(owner, spec.struct.from_buffer(kdata), user)
        except OSError as e:
            result = -(e.errno or errno.EINVAL)
        except Exception:
            log.exception("%s failed", spec.name)
            result = -errno.EINVAL
        out = size if ioc_dir(cmd) & IOC_READ else 0
        if isinstance(result, Completion):
            return IoctlOutcome(0, b"", later=result, kdata=kdata, out_size=out)
        return IoctlOutcome(result, bytes(kdata[:out]))
