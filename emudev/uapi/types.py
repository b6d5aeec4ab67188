"""Runtime support for the generated uapi bindings (``emudev.uapi.defs``).

The generated module only declares data. What every binding shares is written
once here: the asm-generic ``_IOC`` encoding, the ctypes base class that copies
argument structs with ``drm_ioctl()``'s zero-extension rule, and the records
that describe fields, flag sets, enums, families and ioctls.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import ClassVar, Self

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2

_NR_BITS = 8
_TYPE_BITS = 8
_SIZE_BITS = 14
_DIR_BITS = 2
_TYPE_SHIFT = _NR_BITS
_SIZE_SHIFT = _TYPE_SHIFT + _TYPE_BITS
_DIR_SHIFT = _SIZE_SHIFT + _SIZE_BITS


def _check_range(what: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"_IOC {what} {value:#x} does not fit in {bits} bits")


def ioc(dir: int, type: int, nr: int, size: int) -> int:
    """Encode an ioctl request number like the kernel's ``_IOC()`` (x86-64, arm64).

    Out-of-range parts raise instead of silently spilling into the next field,
    which is what the C macro would do.
    """
    _check_range("dir", dir, _DIR_BITS)
    _check_range("type", type, _TYPE_BITS)
    _check_range("nr", nr, _NR_BITS)
    _check_range("size", size, _SIZE_BITS)
    return dir << _DIR_SHIFT | size << _SIZE_SHIFT | type << _TYPE_SHIFT | nr


def ioc_dir(cmd: int) -> int:
    """``_IOC_DIR(cmd)``: IOC_WRITE / IOC_READ bits, as seen from user space."""
    return (cmd >> _DIR_SHIFT) & ((1 << _DIR_BITS) - 1)


def ioc_type(cmd: int) -> int:
    """``_IOC_TYPE(cmd)``: the family's magic character."""
    return (cmd >> _TYPE_SHIFT) & ((1 << _TYPE_BITS) - 1)


def ioc_nr(cmd: int) -> int:
    """``_IOC_NR(cmd)``: the number DRM dispatches on (driver ioctls start at 0x40)."""
    return cmd & ((1 << _NR_BITS) - 1)


def ioc_size(cmd: int) -> int:
    """``_IOC_SIZE(cmd)``: the argument size the *caller* was compiled with."""
    return (cmd >> _SIZE_SHIFT) & ((1 << _SIZE_BITS) - 1)


@dataclass(frozen=True)
class FieldSpec:
    """One struct member as declared in the YAML spec.

    ``type`` keeps the spec's spelling (``u32``, ``ptr``, ``char[32]``) so that
    tracing and docs show what the uapi author wrote, not a ctypes class.
    """

    name: str
    type: str
    offset: int
    size: int
    doc: str
    flags: str | None
    enum: str | None
    is_pointer: bool
    direction: str = "in"


@dataclass(frozen=True)
class FlagSet:
    """Bits that may be set in a ``flags`` field; ``mask`` is what handlers accept."""

    name: str
    members: dict[str, int]
    mask: int
    doc: str

    def invalid(self, value: int) -> int:
        """Bits of ``value`` outside the mask: non-zero means the kernel returns EINVAL."""
        return value & ~self.mask


@dataclass(frozen=True)
class EnumSpec:
    """Named values of a field that selects one thing (a cap, a param)."""

    name: str
    members: dict[str, int]
    doc: str

    def name_of(self, value: int) -> str | None:
        """Reverse lookup for traces; ``None`` for values the uapi does not define."""
        return next((name for name, member in self.members.items() if member == value), None)


@dataclass(frozen=True)
class FamilySpec:
    """An ioctl family: the ``_IOC_TYPE`` it owns and how its file dispatches.

    ``dispatch`` is ``"nr"`` for DRM (``drm_ioctl()`` looks up ``_IOC_NR`` and
    accepts any size) and ``"cmd"`` for dma-buf, sync_file and sw_sync, whose
    handlers ``switch`` on the whole request number. ``unknown_errno`` is what
    an unknown request gets: EINVAL from DRM, ENOTTY from the others. ``errors`` are
    what any of its ioctls may fail with, beside each ioctl's own.
    """

    name: str
    type: int
    doc: str
    dispatch: str = "nr"
    unknown_errno: str = "EINVAL"
    origin: str = "kernel"
    errors: tuple[tuple[str, str], ...] = ()


class UapiStruct(ctypes.Structure):
    """Base of every generated argument struct.

    Subclasses carry ``_specs_`` (the spec's view of each field) and ``_doc_``.
    """

    _specs_: ClassVar[tuple[FieldSpec, ...]] = ()
    _doc_: ClassVar[str] = ""

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Copy an argument in the way ``drm_ioctl()`` does.

        A caller built against an older header passes fewer bytes: the rest is
        zero, which every extension must read as "off". Extra bytes from a newer
        caller are ignored.
        """
        size = ctypes.sizeof(cls)
        raw = bytes(data[:size])
        return cls.from_buffer_copy(raw.ljust(size, b"\0"))

    def to_bytes(self) -> bytes:
        """The struct's bytes, ready to be copied back to the caller."""
        return bytes(self)

    def fields_dict(self) -> dict[str, int | float | bytes]:
        """Field values by name, for tracing; arrays and nested structs are given as their raw bytes."""
        raw = self.to_bytes()
        values: dict[str, int | float | bytes] = {}
        for spec in self._specs_:
            value = getattr(self, spec.name)
            if isinstance(value, int | float | bytes):
                values[spec.name] = value
            else:
                values[spec.name] = raw[spec.offset : spec.offset + spec.size]
        return values

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.fields_dict().items())
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True)
class IoctlSpec:
    """Everything a dispatcher needs to know about one ioctl.

    ``size`` and ``cmd`` are the newest form; ``sizes`` lists every argument
    size a real header has used (old callers pass the shorter ones).
    ``variants`` names extra request numbers for the same ``nr``, such as
    ``DMA_BUF_SET_NAME_A``. With ``by_value`` the ioctl's argument *is* the
    value (a user pointer), not the address of a struct.
    """

    name: str
    family: str
    type: int
    nr: int
    dir: int
    struct: type[UapiStruct]
    size: int
    sizes: tuple[int, ...]
    cmd: int
    permissions: frozenset[str]
    errors: tuple[tuple[str, str], ...]
    doc: str
    requires: frozenset[str] = frozenset()
    variants: tuple[tuple[str, int], ...] = ()
    by_value: bool = False
    cmds: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.cmd != ioc(self.dir, self.type, self.nr, self.size):
            raise ValueError(f"{self.name}: cmd {self.cmd:#x} does not encode its dir/type/nr/size")
        if self.size not in self.sizes:
            raise ValueError(f"{self.name}: newest size {self.size} missing from sizes {self.sizes}")
        cmds = tuple(ioc(self.dir, self.type, self.nr, size) for size in self.sizes)
        object.__setattr__(self, "cmds", cmds)


@dataclass(frozen=True)
class PacketSpec:
    """One packet of the command-stream ISA (``emudev.uapi.isa`` encodes and decodes them).

    ``struct`` is the whole packet, header first; ``size`` its bytes and ``dwords``
    the value its header's ``dwords`` holds. A ``variable_length`` packet (NOP) may
    be longer than ``size`` in a stream. ``engine`` is the engine the opcode runs on,
    or ``None`` for control packets, which name one in their own ``engine`` field.
    """

    name: str
    opcode: int
    engine: int | None
    struct: type[UapiStruct]
    size: int
    dwords: int
    doc: str
    variable_length: bool = False

    def __post_init__(self) -> None:
        if ctypes.sizeof(self.struct) != self.size or self.dwords * 4 != self.size:
            raise ValueError(f"{self.name}: size {self.size} / dwords {self.dwords} do not match its struct")
