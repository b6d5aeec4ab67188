"""Encode, decode and check command streams of the ISA declared in ``spec/isa.yaml``.

Hand-written runtime support, like ``types.py``: the packet structs and the
``PACKETS`` registry are generated into ``defs``; this module turns fields into
packet bytes, a stream back into packets, and checks what the spec alone says
about them: opcode, length and header flags (``decode_stream``), reserved
fields, enum and flag values (``check_fields``). What an op means (shapes, the
dtypes it takes, "src2 all zero for NONE") is the engine's business.

Packets are in host byte order, like every uapi struct: the device and its
clients share one machine.
"""

from __future__ import annotations

import ctypes
import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emudev.uapi import defs
from emudev.uapi.types import FieldSpec, PacketSpec, UapiStruct

HEADER_SIZE = ctypes.sizeof(defs.drm_emudev_pkt_header)
ALIGN = defs.DRM_EMUDEV_PKT_ALIGN
_BY_STRUCT: dict[type[UapiStruct], PacketSpec] = {spec.struct: spec for spec in defs.PACKETS.values()}
# Fields that must be zero: reserved*, and scalar pad* (CONV's and PDP's pad[4] are geometry).
_RESERVED_RE = re.compile(r"^reserved\d*$")
_PAD_RE = re.compile(r"^pad\d*$")
_PREFIX = "DRM_EMUDEV_"


class IsaError(OSError):
    """A malformed stream: EINVAL, naming the packet (index and byte offset) and the reason."""

    def __init__(self, index: int, offset: int, reason: str) -> None:
        super().__init__(errno.EINVAL, f"packet {index} at offset {offset}: {reason}")
        self.index = index
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class DecodedPacket:
    """Packet number ``index`` of a stream, at byte ``offset``; ``packet`` is a copy."""

    index: int
    offset: int
    spec: PacketSpec
    packet: UapiStruct

    @property
    def length(self) -> int:
        """Bytes the packet takes in the stream: ``spec.size``, or more for a padding NOP."""
        return int(self.packet.header.dwords) * 4


def spec_of(packet: str | int | type[UapiStruct] | PacketSpec) -> PacketSpec:
    """The PacketSpec of a name ("CONV", case-insensitive), an opcode or a packet struct class."""
    if isinstance(packet, PacketSpec):
        return packet
    if isinstance(packet, str):
        found = defs.PACKETS_BY_NAME.get(packet.upper())
    elif isinstance(packet, int):
        found = defs.PACKETS.get(packet)
    else:
        found = _BY_STRUCT.get(packet)
    if found is None:
        raise ValueError(f"no packet {packet!r} in the ISA")
    return found


# --------------------------------------------------------------------------- encoding


def encode(packet: str | int | type[UapiStruct] | PacketSpec, /, **fields: Any) -> bytes:
    """The bytes of one packet: header.opcode and header.dwords are filled in.

    Fields are given by their uapi names; a nested struct takes an instance or a
    dict of its fields, an array a sequence of exactly its length. Integers that
    do not fit their field raise ValueError, unknown names TypeError. ``header``
    (a dict or a header struct) overrides the filled-in header, to build malformed
    packets in tests; a NOP whose header says more dwords is padded with zeros.
    """
    spec = spec_of(packet)
    header = fields.pop("header", None)
    built = spec.struct()
    built.header.opcode = spec.opcode
    built.header.dwords = spec.dwords
    for name, value in fields.items():
        _assign(built, name, value)
    if header is not None:
        _assign(built, "header", header)
    data = bytes(built)
    if spec.variable_length:
        data = data.ljust(int(built.header.dwords) * 4, b"\0")
    return data


def _assign(target: ctypes.Structure, name: str, value: Any) -> None:
    ctype = dict(type(target)._fields_).get(name)  # type: ignore[arg-type]
    if ctype is None:
        raise TypeError(f"{type(target).__name__} has no field {name!r}")
    if issubclass(ctype, ctypes.Structure):
        _assign_struct(target, name, ctype, value)
    elif issubclass(ctype, ctypes.Array) and ctype._type_ is ctypes.c_char:
        setattr(target, name, bytes(value))
    elif issubclass(ctype, ctypes.Array):
        array = getattr(target, name)
        values = list(value)
        if len(values) != len(array):
            raise ValueError(f"{name}: {len(values)} values for {len(array)} elements")
        for index, item in enumerate(values):
            if issubclass(ctype._type_, ctypes.Structure):
                if isinstance(item, Mapping):
                    _fill(array[index], item)
                else:
                    array[index] = item
            else:
                array[index] = _checked(ctype._type_, item, f"{name}[{index}]")
    else:
        setattr(target, name, _checked(ctype, value, name))


def _assign_struct(target: ctypes.Structure, name: str, ctype: type, value: Any) -> None:
    if isinstance(value, Mapping):
        _fill(getattr(target, name), value)
    elif isinstance(value, ctype):
        setattr(target, name, value)
    else:
        raise TypeError(f"{name}: expected a {ctype.__name__} or a dict, got {type(value).__name__}")


def _fill(target: ctypes.Structure, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        _assign(target, name, value)


def _checked(ctype: Any, value: Any, where: str) -> Any:
    """``value`` if it fits ``ctype``: ctypes itself would silently truncate it."""
    if ctype is ctypes.c_float:
        return float(value)
    if not isinstance(value, int):
        raise TypeError(f"{where}: expected an integer, got {type(value).__name__}")
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value < 0
    low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    if not low <= value < high:
        raise ValueError(f"{where}: {value} does not fit a {'s' if signed else 'u'}{bits} field")
    return value


# --------------------------------------------------------------------------- decoding


def decode_stream(data: bytes | bytearray | memoryview) -> list[DecodedPacket]:
    """Split a command stream into packets, checking opcode, length and header flags.

    Raises IsaError (EINVAL) at the first packet that is truncated, has an unknown
    opcode, a dwords count that is 0, odd or not its size (a NOP's may be larger),
    runs past the end of the stream, or has header flags set.
    """
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    total = len(view)
    unaligned = f" (the stream's {total} bytes are not a multiple of {ALIGN})" if total % ALIGN else ""
    packets: list[DecodedPacket] = []
    offset = 0
    while offset < total:
        index = len(packets)
        left = total - offset
        if left < HEADER_SIZE:
            raise IsaError(index, offset, f"truncated header: {left} of {HEADER_SIZE} bytes{unaligned}")
        header = defs.drm_emudev_pkt_header.from_buffer_copy(view[offset : offset + HEADER_SIZE])
        spec = defs.PACKETS.get(header.opcode)
        if spec is None:
            raise IsaError(index, offset, f"unknown opcode {header.opcode:#x}")
        reason = _length_problem(spec, header.dwords)
        if reason is None and offset + header.dwords * 4 > total:
            reason = (
                f"{spec.name} of {header.dwords * 4} bytes runs past the end of the {total}-byte stream{unaligned}"
            )
        if reason is None and header.flags:
            reason = f"{spec.name}: header flags {header.flags:#x} are not zero"
        if reason is not None:
            raise IsaError(index, offset, reason)
        packet = spec.struct.from_buffer_copy(view[offset : offset + spec.size])
        packets.append(DecodedPacket(index, offset, spec, packet))
        offset += header.dwords * 4
    return packets


def _length_problem(spec: PacketSpec, dwords: int) -> str | None:
    if dwords == 0:
        return f"{spec.name}: dwords is 0"
    if dwords % 2:
        return f"{spec.name}: dwords {dwords} is odd; packets are multiples of {ALIGN} bytes"
    if spec.variable_length and dwords < spec.dwords:
        return f"{spec.name}: dwords {dwords} is below its {spec.dwords}"
    if not spec.variable_length and dwords != spec.dwords:
        return f"{spec.name}: dwords {dwords}, but the packet is {spec.dwords} dwords ({spec.size} bytes)"
    return None


# --------------------------------------------------------------------------- field checks


def check_fields(decoded: DecodedPacket | UapiStruct) -> str | None:
    """The first spec-level field problem, or None.

    Reserved fields (``reserved*``, scalar ``pad*``) must be zero; an ``enum:``
    field must hold a member, a ``flags:`` field no bit outside its mask. Nested
    structs are checked too (``src.dtype``). Op-specific rules are the engine's.
    """
    packet = decoded.packet if isinstance(decoded, DecodedPacket) else decoded
    return _struct_problem(packet, "")


def _struct_problem(struct: UapiStruct, prefix: str) -> str | None:
    for spec in struct._specs_:
        value = getattr(struct, spec.name)
        where = prefix + spec.name
        if isinstance(value, ctypes.Structure):
            problem = _struct_problem(value, f"{where}.")  # type: ignore[arg-type]
        elif isinstance(value, ctypes.Array) and isinstance(value[0], ctypes.Structure):
            problem = next(
                filter(None, (_struct_problem(item, f"{where}[{i}].") for i, item in enumerate(value))), None
            )
        else:
            problem = _value_problem(spec, value, where)
        if problem:
            return problem
    return None


def _value_problem(spec: FieldSpec, value: Any, where: str) -> str | None:
    if isinstance(value, ctypes.Array):
        # enum and flags fields are scalars; an array can only be reserved.
        return f"{where} = {list(value)} is not zero" if _is_reserved(spec) and any(value) else None
    if _is_reserved(spec) and value:
        return f"{where} = {value:#x} is not zero" if isinstance(value, int) else f"{where} = {value} is not zero"
    if spec.enum is not None and defs.ENUMS[spec.enum].name_of(value) is None:
        return f"{where} = {value} is not a {spec.enum}"
    if spec.flags is not None:
        invalid = defs.FLAGSETS[spec.flags].invalid(value)
        if invalid:
            return f"{where} = {value:#x} has bits {invalid:#x} outside {spec.flags}"
    return None


def _is_reserved(spec: FieldSpec) -> bool:
    return bool(_RESERVED_RE.match(spec.name)) or (bool(_PAD_RE.match(spec.name)) and "[" not in spec.type)


# --------------------------------------------------------------------------- rendering


def describe(decoded: DecodedPacket | UapiStruct) -> str:
    """One line for traces and error messages: the packet's name and its fields.

    The header is left out (a NOP longer than its header shows its dwords), and so
    are reserved fields that are zero. Enum and flag values show their names without
    the DRM_EMUDEV_ prefix, addresses are in hex, an all-zero nested struct is {0}.
    """
    packet = decoded.packet if isinstance(decoded, DecodedPacket) else decoded
    spec = spec_of(type(packet))
    parts = [spec.name]
    if packet.header.dwords != spec.dwords:
        parts.append(f"dwords={packet.header.dwords}")
    for field in packet._specs_[1:]:
        value = getattr(packet, field.name)
        if not (_is_reserved(field) and _is_zero(value)):
            parts.append(f"{field.name}={_render(field, value)}")
    return " ".join(parts)


def _is_zero(value: Any) -> bool:
    if isinstance(value, ctypes.Structure | ctypes.Array):
        return not bytes(value).strip(b"\0")
    return not value


def _render(field: FieldSpec, value: Any) -> str:
    if isinstance(value, ctypes.Structure):
        if _is_zero(value):
            return "{0}"
        specs: tuple[FieldSpec, ...] = value._specs_  # type: ignore[attr-defined]
        return "{" + " ".join(f"{spec.name}={_render(spec, getattr(value, spec.name))}" for spec in specs) + "}"
    if isinstance(value, ctypes.Array):
        return "[" + ",".join(_render(field, item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if field.enum is not None:
        name = defs.ENUMS[field.enum].name_of(value)
        return _short(name) if name else str(value)
    if field.flags is not None:
        return _flag_names(defs.FLAGSETS[field.flags].members, value)
    if field.name == "va" or field.name.endswith("_va"):
        return f"{value:#x}"
    return str(value)


def _short(name: str) -> str:
    return name.removeprefix(_PREFIX)


def _flag_names(members: Mapping[str, int], value: int) -> str:
    if not value:
        return "0"
    known = {name: bit for name, bit in members.items() if bit and value & bit == bit}
    rest = value
    for bit in known.values():
        rest &= ~bit
    return "|".join([*map(_short, known), *([f"{rest:#x}"] if rest else [])])
