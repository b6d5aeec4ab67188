"""Captured requests as the fields a trace shows, named as the uapi spec names them.

Struct layouts, flag and enum names come from the generated bindings; what a user
pointer points to (`points-to` in the YAML, which the bindings do not carry) is read
from the spec files once, on first use. The same walk over flags fields serves the
coverage recorder, so a trace and the coverage gate can never disagree on what a
request used.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from emudev.uapi import defs, isa
from emudev.uapi.types import FieldSpec, IoctlSpec, UapiStruct

if TYPE_CHECKING:
    from emudev.trace.capture import Call

SPEC_DIR = Path(__file__).resolve().parents[1] / "uapi" / "spec"
# The ioctl that carries command streams: packet fields are "used" by it.
STREAM_IOCTL = "DRM_IOCTL_EMUDEV_SUBMIT"
_SCALARS = {"u8": "B", "s8": "b", "u16": "H", "s16": "h", "u32": "I", "s32": "i", "u64": "Q", "s64": "q"}
_POINTEE_RE = re.compile(r"^(?P<elem>[A-Za-z0-9_]+)\[(?P<count>[A-Za-z0-9_]+)\]$")


@dataclass(frozen=True)
class Pointee:
    """What a user pointer points to: `count` elements (a field of the same struct, or a
    constant) of a scalar type, of char (a string) or of a uapi struct."""

    elem: str
    count: str

    @property
    def size(self) -> int:
        if self.elem == "char":
            return 1
        if self.elem in _SCALARS:
            return struct.calcsize(_SCALARS[self.elem])
        return ctypes.sizeof(getattr(defs, self.elem))

    def count_in(self, owner: UapiStruct) -> int | None:
        if any(spec.name == self.count for spec in owner._specs_):
            return int(getattr(owner, self.count))
        value = getattr(defs, self.count, None)
        return value if isinstance(value, int) else None

    def elements(self, data: bytes, owner: UapiStruct) -> list[bytes]:
        """The elements in `data`; the stride of an array read with a caller-given stride
        (SUBMIT's) is what the read's length implies."""
        size = self.size
        if len(data) < size:
            return []
        count = self.count_in(owner)
        n = count if count is not None else len(data) // size
        stride = size if n <= 1 else max(size, (len(data) - size) // (n - 1))
        n = min(n, (len(data) - size) // stride + 1)
        return [data[i * stride: i * stride + size] for i in range(n)]

    def decode(self, data: bytes, owner: UapiStruct, ioctl: str | None) -> Any:
        if self.elem == "char":
            count = self.count_in(owner)
            return data[: count if count is not None else len(data)].split(b"\0", 1)[0].decode(errors="replace")
        items = self.elements(data, owner)
        if self.elem in _SCALARS:
            return [struct.unpack("=" + _SCALARS[self.elem], item)[0] for item in items]
        cls = getattr(defs, self.elem)
        return [struct_fields(cls.from_buffer_copy(item), ioctl) for item in items]


@functools.cache
def pointees() -> dict[tuple[str, str], Pointee]:
    """(struct, field) → what the pointer field points to, from every spec file."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    found: dict[tuple[str, str], Pointee] = {}
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        document = yaml.load(path.read_text(), Loader=loader)
        fields = [(s["name"], f) for s in document.get("structs") or () for f in s.get("fields") or ()]
        fields += [(i["scalar"]["struct"], i["scalar"]) for i in document.get("ioctls") or () if "scalar" in i]
        for struct_name, spec in fields:
            match = _POINTEE_RE.match(str(spec.get("points-to", "")))
            if match:
                found[(struct_name, spec.get("name") or spec["field"])] = Pointee(match["elem"], match["count"])
    return found


def pointee(cls: type[UapiStruct], field: str) -> Pointee | None:
    return pointees().get((cls.__name__, field))


# -- flags ------------------------------------------------------------------------------------------


def _flag_fields(cls: type[UapiStruct], directions: tuple[str, ...]) -> Iterator[str]:
    """Flag sets of `cls`'s fields in `directions`, nested structs and pointed-to structs included."""
    for spec in cls._specs_:
        nested = getattr(defs, spec.type.split("[")[0], None)
        if spec.flags is not None and spec.direction in directions:
            yield spec.flags
        elif isinstance(nested, type) and issubclass(nested, UapiStruct):
            yield from _flag_fields(nested, ("in", "out", "inout"))
        target = pointee(cls, spec.name) if spec.is_pointer else None
        if target is not None and hasattr(defs, target.elem):
            yield from _flag_fields(getattr(defs, target.elem), ("in", "out", "inout"))


@functools.cache
def flagset_users() -> dict[str, frozenset[str]]:
    """Flag set → the ioctls whose arguments (pointed-to arrays and, for SUBMIT, packets
    included) carry it."""
    users: dict[str, set[str]] = {}
    for spec in defs.IOCTLS:
        sets = set(_flag_fields(spec.struct, ("in", "out", "inout")))
        if spec.name == STREAM_IOCTL:
            sets |= {f for packet in defs.PACKETS.values() for f in _flag_fields(packet.struct, ("in",))}
        for flagset in sets:
            users.setdefault(flagset, set()).add(spec.name)
    return {name: frozenset(ioctls) for name, ioctls in users.items()}


def member_owner(flagset: str, member: str) -> str | None:
    """The ioctl a member belongs to when it is named after one of its flag set's users, as
    DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE belongs to SYNCOBJ_FD_TO_HANDLE while
    EXPORT_SYNC_FILE, of the same value and set, belongs to HANDLE_TO_FD; None if any user."""
    for ioctl in sorted(flagset_users().get(flagset, ())):
        if member.startswith(ioctl.replace("_IOCTL_", "_", 1) + "_"):
            return ioctl
    return None


@functools.cache
def members_for(flagset: str, ioctl: str | None) -> dict[str, int]:
    """The members of `flagset` that mean something to `ioctl`."""
    return {name: value for name, value in defs.FLAGSETS[flagset].members.items()
            if ioctl is None or member_owner(flagset, name) in (None, ioctl)}


def flag_text(flagset: str, value: int, ioctl: str | None) -> str:
    """`A|B` by member name, widest members first (DMA_BUF_SYNC_RW rather than READ|WRITE);
    bits no member names stay in hex."""
    if not value:
        return "0"
    members = sorted(((v, n) for n, v in members_for(flagset, ioctl).items() if v), key=lambda m: -bin(m[0]).count("1"))
    names, rest = [], value
    for bits, name in members:
        if rest & bits == bits:
            names.append(name)
            rest &= ~bits
    return "|".join([*names, *([f"{rest:#x}"] if rest else [])])


def walk_flags(value: UapiStruct, directions: tuple[str, ...]) -> Iterator[tuple[str, int]]:
    """(flag set, value) of every flags field of `value` in `directions`, nested structs included."""
    for spec in value._specs_:
        item = getattr(value, spec.name)
        if spec.flags is not None and spec.direction in directions:
            yield spec.flags, int(item)
        elif isinstance(item, UapiStruct):
            yield from walk_flags(item, ("in", "out", "inout"))
        elif isinstance(item, ctypes.Array) and len(item) and isinstance(item[0], UapiStruct):
            for element in item:
                yield from walk_flags(element, ("in", "out", "inout"))


# -- values -----------------------------------------------------------------------------------------


# Names of errno values that have two, as the uapi spells them (errno.errorcode says ENOTSUP, EDEADLOCK).
_ERRNO_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EDEADLK: "EDEADLK"}


def errno_name(result: int) -> str | None:
    """The name of -`result`, for a failed request; None for a success."""
    if result >= 0:
        return None
    return _ERRNO_NAMES.get(-result) or errno.errorcode.get(-result, str(-result))


def render(spec: FieldSpec, value: Any, ioctl: str | None) -> Any:
    """A field's value for JSON: flags and enums by name, pointers in hex, char arrays as text."""
    if isinstance(value, UapiStruct):
        return struct_fields(value, ioctl)
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode(errors="replace")
    if isinstance(value, ctypes.Array):
        return [render(spec, item, ioctl) for item in value]
    if spec.is_pointer:
        return f"{value:#x}"
    if spec.flags is not None:
        return flag_text(spec.flags, value, ioctl)
    if spec.enum is not None:
        return defs.ENUMS[spec.enum].name_of(value) or value
    return value


def struct_fields(value: UapiStruct, ioctl: str | None, directions: tuple[str, ...] = ("in", "out", "inout"),
                  size: int | None = None) -> dict[str, Any]:
    """Fields in `directions` that lie within the first `size` bytes (the caller's struct size)."""
    limit = ctypes.sizeof(value) if size is None else size
    return {spec.name: render(spec, getattr(value, spec.name), ioctl) for spec in value._specs_
            if spec.direction in directions and spec.offset + spec.size <= limit}


def regions(accesses: Sequence[tuple[int, bytes | None]]) -> dict[int, bytes]:
    """Start address → bytes of each run of successive accesses that continue one another
    (a string is read page by page); faulted accesses are left out."""
    runs: list[tuple[int, bytes]] = []
    for address, data in accesses:
        if data is None:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + data)
        else:
            runs.append((address, data))
    return dict(runs)


def pointer_contents(value: UapiStruct, accesses: Sequence[tuple[int, bytes | None]],
                     ioctl: str | None) -> dict[str, Any]:
    """What each pointer field of `value` pointed to, as far as the handler read (or wrote) it."""
    found = regions(accesses)
    contents = {}
    for spec in value._specs_:
        target = pointee(type(value), spec.name) if spec.is_pointer else None
        data = found.get(getattr(value, spec.name)) if target is not None else None
        if target is not None and data is not None:
            contents[spec.name] = target.decode(data, value, ioctl)
    return contents


def pointed_structs(value: UapiStruct, accesses: Sequence[tuple[int, bytes | None]]) -> Iterator[UapiStruct]:
    """The struct elements of the arrays `value`'s pointers point to, as far as they were accessed."""
    found = regions(accesses)
    for spec in value._specs_:
        target = pointee(type(value), spec.name) if spec.is_pointer else None
        data = found.get(getattr(value, spec.name)) if target is not None else None
        if target is not None and data is not None and target.elem not in _SCALARS and target.elem != "char":
            cls = getattr(defs, target.elem)
            yield from (cls.from_buffer_copy(item) for item in target.elements(data, value))


def argument(spec: IoctlSpec, in_bytes: bytes, arg: int) -> UapiStruct:
    """The argument as the handler saw it: the caller's bytes, or the value itself (by-value ioctls)."""
    if spec.by_value:
        return spec.struct.from_bytes((arg & ((1 << (8 * spec.size)) - 1)).to_bytes(spec.size, "little"))
    return spec.struct.from_bytes(in_bytes)


def stream_packets(stream: bytes) -> list[isa.DecodedPacket] | str:
    try:
        return isa.decode_stream(stream)
    except isa.IsaError as e:
        return f"malformed: {e.strerror}"


def call_fields(call: Call) -> dict[str, Any]:
    """Everything a reader gets about one ioctl; `raw` is what a replay needs."""
    spec = call.spec
    name = spec.name if spec is not None else None
    fields: dict[str, Any] = {
        "type": "ioctl", "seq": call.seq, "t": call.t_ns / 1e9, "pid": call.pid, "tgid": call.tgid,
        "comm": call.comm, "fh": call.fh, "file": call.file, "client": call.client, "ioctl": name,
        "cmd": f"{call.cmd:#x}",
    }
    if spec is not None:
        arg = argument(spec, call.in_bytes, call.arg)
        in_size = spec.size if spec.by_value else len(call.in_bytes)
        fields["args"] = struct_fields(arg, name, ("in", "inout"), in_size)
        if pointers := pointer_contents(arg, call.reads, name):
            fields["ptr"] = pointers
    fields["result"] = call.result
    fields["errno"] = errno_name(call.result)
    fields["us"] = round((call.end_ns - call.t_ns) / 1000, 1)
    if spec is not None and call.out_bytes:
        out = spec.struct.from_bytes(call.out_bytes)
        fields["out"] = struct_fields(out, name, ("out", "inout"), len(call.out_bytes))
        if pointers := pointer_contents(out, call.writes, name):
            fields["ptr_out"] = pointers
    if call.stream is not None:
        packets = stream_packets(call.stream)
        fields["packets"] = packets if isinstance(packets, str) else [isa.describe(p) for p in packets]
    fields["raw"] = {
        "t_ns": call.t_ns, "in": call.in_bytes.hex(), "arg": call.arg, "out": call.out_bytes.hex(),
        "reads": [[a, d.hex() if d is not None else None] for a, d in call.reads],
        "writes": [[a, d.hex()] for a, d in call.writes],
        "stream": call.stream.hex() if call.stream is not None else None,
        "tickets": [list(t) for t in call.tickets], "fds": [list(f) for f in call.fds],
    }
    return fields
