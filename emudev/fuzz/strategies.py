"""Hypothesis strategies for requests, derived from the ioctl layouts (``layout.py``).

``call_plans(layout, view)`` draws a request for any ioctl of ``defs.IOCTLS``: each
field gets a valid-looking value for its role, from the fuzzing client's current
state (``View``: its handles, contexts, jobs, streams, the fds of its process), or a
broken one: unknown flag bits, non-zero pads, unknown handles, NULL, wild or
inaccessible pointers, counts larger than the array behind them, timeouts in the past.
The request itself may be broken too: an older (shorter) or longer size, other
direction bits, an unknown number, another type byte, a bad argument pointer, the
wrong kind of file. Modes say how much is broken: VALID, FIELD (one field), CHAOS
(any field), REQUEST (the request, not the fields).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from emudev.fuzz import layout as L
from emudev.fuzz.plan import BUFFER, GUARD, NULL, WILD, CallPlan, Deadline, Pointer, put_f32, put_int
from emudev.uapi import defs
from emudev.uapi.types import IOC_READ, IOC_WRITE, ioc, ioc_dir, ioc_size

Draw = Callable[[st.SearchStrategy[Any]], Any]

VALID = "valid"
FIELD = "field"
CHAOS = "chaos"
REQUEST = "request"
MODES = (VALID, VALID, VALID, FIELD, FIELD, CHAOS, REQUEST)

MS = 1_000_000
# Every wait is bounded: absolute timeouts are at most this far ahead of the call.
MAX_WAIT_NS = 50 * MS

# Values that often sit on a boundary, per byte size.
SPECIAL: dict[int, tuple[int, ...]] = {
    1: (0, 1, 0x7F, 0x80, 0xFF),
    2: (0, 1, 0x7FFF, 0x8000, 0xFFFF),
    4: (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE),
    8: (0, 1, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1),
}
# Addresses no process can have mapped: below mmap_min_addr (64 KiB) or not canonical on x86-64/arm64.
WILD_ADDRESSES = (1, 8, 0xFFF, 0x1000, 0xFFFF, 1 << 47, 0xDEAD000000000000, 0xFFFF800000000000, (1 << 64) - 1)
# Type bytes that are neither DRM's nor ones the VFS or the FUSE kernel answer themselves
# (0x00 FIBMAP/FIGETBSZ, 'T' FIONBIO/FIOCLEX/FIONREAD, 'X' FIFREEZE, 'f' FS_IOC_*, 0x94 FICLONE, 'v', 0x12 BLK*, '!').
FOREIGN_TYPES = tuple(t for t in range(1, 256) if t not in (0x12, 0x21, 0x54, 0x58, 0x66, 0x76, 0x94))
NAME_ALPHABET = string.ascii_letters + string.digits + "-_."
BAD_NAME_CHARS = " \t\0\x7f\xff"
# Request mutations of REQUEST mode.
REQUEST_MUTATIONS = ("short-size", "long-size", "dir", "unknown-nr", "foreign-type", "arg-null", "arg-guard",
                     "wrong-file")


@dataclass(frozen=True)
class BoView:
    """A BO of the client with what BO_INFO said about it."""

    handle: int
    size: int
    va: int
    flags: int

    @property
    def writable(self) -> bool:
        return not self.flags & defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY


@dataclass(frozen=True)
class StreamView:
    """A command stream uploaded to a BO of the client."""

    handle: int
    offset: int
    size: int
    bo_size: int


@dataclass(frozen=True)
class View:
    """What the strategies may use of the fuzzing state: one client, its process, the device."""

    client: int = -1
    device_fd: int = -1
    bos: tuple[BoView, ...] = ()
    gem: tuple[int, ...] = ()
    syncobjs: tuple[int, ...] = ()
    max_point: int = 0
    ctxs: tuple[int, ...] = ()
    jobs: tuple[tuple[int, int], ...] = ()
    streams: tuple[StreamView, ...] = ()
    flinks: tuple[int, ...] = ()
    fds: tuple[tuple[int, str], ...] = ()
    closed_fds: tuple[int, ...] = ()
    va_start: int = 1 << 32
    va_end: int = 1 << 40
    avoid: frozenset[str] = frozenset()

    def fds_of(self, kinds: tuple[str, ...]) -> list[int]:
        return [fd for fd, kind in self.fds if kind in kinds]

    def handles(self) -> list[int]:
        return sorted({*self.gem, *self.syncobjs})


# --------------------------------------------------------------------------- integers


def any_int(draw: Draw, size: int) -> int:
    """Any bit pattern of `size` bytes, boundary values first."""
    return draw(st.one_of(st.sampled_from(SPECIAL[size]), st.integers(0, (1 << (8 * size)) - 1)))


def small(draw: Draw, top: int = 4) -> int:
    """What a field with no known meaning gets when valid: counts, indices and sizes are small."""
    return draw(st.integers(0, top))


def _not_in(draw: Draw, size: int, used: Any) -> int:
    """A value of `size` bytes that is none of `used` (an unknown handle, id or name)."""
    top = max([0, *used]) if used else 0
    return draw(st.sampled_from([0, top + 1, top + 100, 0x7FFFFFFF, 0xFFFFFFFF][: 5 if size >= 4 else 2]))


# --------------------------------------------------------------------------- one argument


@dataclass
class ArgDraw:
    """The argument being drawn: its bytes, pointers, deadlines and what was broken."""

    size: int
    buf: bytearray = field(init=False)
    pointers: list[Pointer] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    values: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    stream: StreamView | None = None

    def __post_init__(self) -> None:
        self.buf = bytearray(self.size)


def flags_value(draw: Draw, field_: L.FieldLayout, broken: bool) -> int:
    """A subset of the flagset's members; broken: a bit outside its mask, or any value."""
    flagset = defs.FLAGSETS[field_.flags] if field_.flags else None
    members = sorted({v for v in flagset.members.values() if v}) if flagset else []
    mask = flagset.mask if flagset else 0
    value = 0
    # Valid: a subset of the members; not the empty one where the flagset's doc asks for a bit.
    lo = 1 if members and field_.flags and (L.needs_a_flag(field_.flags) or draw(st.booleans())) else 0
    for bit in draw(st.lists(st.sampled_from(members), min_size=lo, max_size=len(members), unique=True)) \
            if members else []:
        value |= bit
    if broken:
        outside = [b for b in range(8 * field_.size) if not (mask >> b) & 1]
        if outside and draw(st.booleans()):
            value |= 1 << draw(st.sampled_from(outside))
        else:
            value = any_int(draw, field_.size)
    return value & ~field_.never


def enum_value(draw: Draw, field_: L.FieldLayout, broken: bool) -> int:
    """One of the enum's members; broken: just past the last one, or any value that is none."""
    members = sorted(set(defs.ENUMS[field_.enum].members.values())) if field_.enum else [0]
    if not broken:
        return draw(st.sampled_from(members))
    top = max(members)
    return draw(st.one_of(st.sampled_from([top + 1, top + 2, 0x100, (1 << (8 * field_.size)) - 1]),
                          st.integers(0, (1 << (8 * field_.size)) - 1).filter(lambda v: v not in members)))


def handle_value(draw: Draw, role: str, view: View, values: Mapping[str, int], size: int, broken: bool) -> int:
    """A handle, id or name of the client's state for `role`, or one that is not."""
    pools: dict[str, list[int]] = {
        L.GEM: sorted(view.gem),
        L.SYNCOBJ: sorted(view.syncobjs),
        L.CTX: sorted(view.ctxs),
        L.FLINK: sorted(view.flinks),
        L.ANY_HANDLE: view.handles(),
        L.SEQNO: sorted({s for c, s in view.jobs if c == values.get("ctx_id", c)}),
    }
    if role == L.GEM_NEW:
        unused = max([0, *view.gem]) + 1
        if not broken:
            return unused + small(draw, 3)
        return draw(st.sampled_from([0, *sorted(view.gem)[:2], unused + 1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))
    pool = pools.get(role, [])
    if pool and not broken:
        return draw(st.sampled_from(pool))
    other = {L.GEM: view.syncobjs, L.SYNCOBJ: view.gem, L.CTX: view.gem}.get(role, ())
    if other and draw(st.booleans()):
        return draw(st.sampled_from(sorted(set(other) - set(pool)) or sorted(other)))
    return _not_in(draw, size, pool)


def fd_value(draw: Draw, role: str, view: View, broken: bool) -> int:
    """A descriptor of the process: of the kinds the role prefers, else any; or a bad one."""
    preferred = view.fds_of(L.fd_kinds(role))
    if preferred and not broken:
        return draw(st.sampled_from(preferred))
    choices: list[int] = [-1, defs.DRM_EMUDEV_FD_TICKET_MAX, -100, 0x7FFFFFFF, 1 << 20, view.device_fd]
    choices += list(view.closed_fds[-2:]) + [fd for fd, _ in view.fds][:6]
    return draw(st.sampled_from([c for c in choices if c is not None]))


def point_value(draw: Draw, view: View, broken: bool) -> int:
    """Around the points the client used (submitted or not); broken: far beyond, 64-bit limits."""
    if not broken:
        return draw(st.integers(0, view.max_point + 3))
    return draw(st.sampled_from([(1 << 64) - 1, 1 << 63, (1 << 32) + 1, view.max_point + 1000]))


def bo_size_value(draw: Draw, broken: bool) -> int:
    """Small BOs (the device has 1 GiB); broken: 0, sizes that overflow when page-rounded, too large."""
    if not broken:
        return draw(st.one_of(st.integers(1, 64 << 10), st.sampled_from([4096, 8192, 65536])))
    return draw(st.sampled_from([0, (1 << 64) - 1, (1 << 64) - 4095, 1 << 63, 1 << 40, 2 << 30]))


def string_bytes(draw: Draw, capacity: int | None, broken: bool, lo: int = 1) -> bytes:
    """A name: printable, no spaces, shorter than `capacity` (room for a NUL); or a bad one."""
    top = (capacity - 1) if capacity else defs.DRM_CLIENT_NAME_MAX_LEN
    if not broken:
        return draw(st.text(NAME_ALPHABET, min_size=min(lo, top), max_size=min(top, 40))).encode()
    if draw(st.booleans()):
        long = draw(st.integers(top + 1, top + 40))
        return draw(st.text(NAME_ALPHABET, min_size=long, max_size=long)).encode()
    text = draw(st.text(NAME_ALPHABET + BAD_NAME_CHARS, min_size=1, max_size=max(1, min(top, 40))))
    return (text + BAD_NAME_CHARS[draw(st.integers(0, len(BAD_NAME_CHARS) - 1))]).encode("latin-1")


def timeout_value(draw: Draw, arg: ArgDraw, offset: int, broken: bool) -> int | None:
    """A deadline slot `now + delta` (returns None) or a literal value; never more than MAX_WAIT_NS ahead."""
    if not broken:
        if draw(st.integers(0, 4)) == 0:
            return 0
        arg.deadlines.append(Deadline(offset, draw(st.integers(0, MAX_WAIT_NS))))
        return None
    literal = draw(st.sampled_from([None, -1, 1, -(1 << 63), None]))
    if literal is None:
        arg.deadlines.append(Deadline(offset, -draw(st.integers(1, 10_000 * MS))))
        return None
    return literal


def deadline_value(draw: Draw, arg: ArgDraw, offset: int, broken: bool) -> int | None:
    """A deadline hint near now, or 0; broken: far future (a hint is never waited for)."""
    if not broken:
        if draw(st.booleans()):
            return 0
        arg.deadlines.append(Deadline(offset, draw(st.integers(0, MAX_WAIT_NS))))
        return None
    return draw(st.sampled_from([(1 << 64) - 1, 1 << 63, 1]))


def va_value(draw: Draw, view: View, size: int, broken: bool, align: int = 8) -> int:
    """An address inside a BO of the client's address space, or outside all of them."""
    if view.bos and not broken:
        bo = draw(st.sampled_from(view.bos))
        return bo.va + draw(st.integers(0, max(0, bo.size // align - 1))) * align
    ends = [bo.va + bo.size for bo in view.bos][:3]
    return draw(st.sampled_from([0, view.va_start - align, view.va_end, *ends, (1 << (8 * size)) - align]))


def stream_field(draw: Draw, role: str, view: View, arg: ArgDraw, broken: bool) -> int:
    """SUBMIT's cmd_handle/cmd_offset/cmd_size: one uploaded stream, or a broken part of it."""
    if arg.stream is None and view.streams:
        arg.stream = draw(st.sampled_from(view.streams))
    stream = arg.stream
    if role == L.STREAM_HANDLE:
        if stream is not None and not broken:
            return stream.handle
        return handle_value(draw, L.GEM, view, arg.values, 4, True) if not view.gem or draw(st.booleans()) \
            else draw(st.sampled_from(view.gem))
    if role == L.STREAM_OFFSET:
        base = stream.offset if stream else 0
        if not broken:
            return base
        return draw(st.sampled_from([base + 4, base + 1, (stream.bo_size if stream else 4096), 0xFFFFFFF8]))
    base = stream.size if stream else 8
    if not broken:
        return base
    return draw(st.sampled_from([0, base + 4, base + 8, defs.DRM_EMUDEV_MAX_CMD_SIZE + 8, 0xFFFFFFF8,
                                 max(8, base - 8)]))


def float_value(draw: Draw, broken: bool) -> float:
    """Packets' f32 fields: ordinary values; broken: NaN, infinities, huge."""
    if not broken:
        return draw(st.sampled_from([0.0, 1.0, 0.5, -1.0, 6.0, 0.1]))
    return draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 3.4e38, -0.0]))


def scalar_value(draw: Draw, field_: L.FieldLayout, role: str, view: View, arg: ArgDraw, offset: int,
                 broken: bool) -> int | float | None:
    """The value of one scalar of `role`; None when a deadline slot will fill it in."""
    base = L.base_role(role)
    out = role.startswith(L.OUT_PREFIX) or role == L.OUT
    size = field_.elem_size
    if field_.base == "f32":
        return float_value(draw, broken)
    if out or base == L.ZERO:
        return any_int(draw, size) if broken else 0
    if base == L.FLAGS:
        return flags_value(draw, field_, broken)
    if base == L.ENUM:
        return enum_value(draw, field_, broken)
    if base in L.HANDLE_ROLES:
        return handle_value(draw, base, view, arg.values, size, broken)
    if base == L.FD:
        return fd_value(draw, role, view, broken)
    if base == L.POINT:
        return point_value(draw, view, broken)
    if base == L.TIMEOUT:
        return timeout_value(draw, arg, offset, broken)
    if base == L.DEADLINE:
        return deadline_value(draw, arg, offset, broken)
    if base == L.BO_SIZE:
        return bo_size_value(draw, broken)
    if base == L.DEVICE_VA:
        return va_value(draw, view, size, broken)
    if base in (L.STREAM_HANDLE, L.STREAM_OFFSET, L.STREAM_SIZE):
        return stream_field(draw, base, view, arg, broken)
    return any_int(draw, size) if broken else small(draw)


# --------------------------------------------------------------------------- structs and arrays


def fill_struct(draw: Draw, layout: L.StructLayout, view: View, arg: ArgDraw, base: int, buf: bytearray,
                broken: Callable[[str], bool], prefix: str = "") -> None:
    """Draw every field of `layout` into `buf` at `base`: counts, strides and arrays first, then the rest."""
    counts: dict[str, int] = {}
    strides: dict[str, int] = {}
    for f in layout.fields:
        if f.role == L.STRIDE:
            elem = _stride_elem(layout, f)
            bad = broken(prefix + f.name)
            value = draw(st.sampled_from([elem, elem, elem + 8])) if not bad else \
                draw(st.sampled_from([0, 1, max(0, elem - 1), elem + 3, 0xFFFFFFFF]))
            if bad:
                arg.labels.append(f"{prefix}{f.name}")
            strides[f.name] = value
            put_int(buf, base + f.offset, f.size, value)
    for f in layout.fields:
        if f.role == L.ARRAY and f.array is not None and base == 0:
            _fill_array(draw, f, f.array, view, arg, counts, strides, broken(prefix + f.name))
    for f in layout.fields:
        path = prefix + f.name
        if f.role in (L.ARRAY, L.STRIDE):
            continue
        if f.role == L.POINTER:
            bad = broken(path)
            arg.pointers.append(_bad_pointer(draw, base + f.offset) if bad else
                                Pointer(base + f.offset, BUFFER, bytes(small(draw, 64))))
            continue
        if f.role == L.COUNT:
            n = counts.get(f.name, 0)
            if broken(path):
                n = draw(st.sampled_from([n + 1, n + 100, 0x7FFFFFFF, 0xFFFFFFFF, 0 if n else 1]))
                arg.labels.append(path)
            put_int(buf, base + f.offset, f.size, n)
            arg.values[f.name] = n
            continue
        if f.struct is not None:
            fill_struct(draw, f.struct, view, arg, base + f.offset, buf, broken, prefix=f"{path}.")
            continue
        bad = broken(path) and f.is_input
        if bad:
            arg.labels.append(path)
        if f.role == L.STRING or (f.base == "char" and f.count):
            data = string_bytes(draw, f.count, bad)[: f.size]
            buf[base + f.offset: base + f.offset + f.size] = data.ljust(f.size, b"\0")
            continue
        for index in range(f.count or 1):
            offset = base + f.offset + index * f.elem_size
            value = scalar_value(draw, f, f.role, view, arg, offset, bad)
            if isinstance(value, float):
                put_f32(buf, offset, value)
            elif value is not None:
                put_int(buf, offset, f.elem_size, value)
                arg.values.setdefault(f.name, value)


def _stride_elem(layout: L.StructLayout, stride: L.FieldLayout) -> int:
    arrays = [layout.field(name).array for name in stride.strides]
    return max(a.elem_size for a in arrays if a is not None)


def _pool(role: str, view: View) -> tuple[int, ...] | None:
    """The values the client has for a handle role (None: not a handle role)."""
    return {L.GEM: view.gem, L.SYNCOBJ: view.syncobjs, L.CTX: view.ctxs, L.FLINK: view.flinks,
            L.ANY_HANDLE: tuple(view.handles())}.get(L.base_role(role))


def _nothing_for(array: L.ArrayLayout, view: View) -> bool:
    """An array of handles (or of structs naming one) the client has none of: valid means empty."""
    roles = [array.elem_role] if array.elem_struct is None else [f.role for f in array.elem_struct.fields]
    return any(_pool(role, view) == () for role in roles)


def _bad_pointer(draw: Draw, offset: int) -> Pointer:
    kind = draw(st.sampled_from([NULL, GUARD, WILD]))
    return Pointer(offset, kind, value=draw(st.sampled_from(WILD_ADDRESSES)) if kind == WILD else 0)


def _fill_array(draw: Draw, f: L.FieldLayout, array: L.ArrayLayout, view: View, arg: ArgDraw,
                counts: dict[str, int], strides: dict[str, int], broken: bool) -> None:
    """The elements behind a pointer field; its count field takes their number."""
    stride = strides.get(array.stride_field or "", array.elem_size) if array.stride_field else array.elem_size
    stride = stride if 0 < stride <= 4096 else array.elem_size
    if array.elem == "char":
        text = string_bytes(draw, array.capacity, broken and draw(st.booleans()), lo=0)
        payload = text + (b"\0" if array.capacity else b"")
        n = len(text)
    else:
        n = counts.get(array.count_field or "", -1)
        if n < 0:
            n = 0 if not broken and _nothing_for(array, view) else draw(st.sampled_from([1, 1, 2, 3, 4, 0]))
        payload = bytearray(n * stride)
        for index in range(n):
            at = index * stride
            if array.elem_struct is not None:
                sub = ArgDraw(0)
                fill_struct(draw, array.elem_struct, view, sub, at, payload,
                            lambda _path: broken and draw(st.integers(0, 3)) == 0)
                arg.labels += [f"{f.name}[{index}].{label}" for label in sub.labels]
            else:
                elem = L.FieldLayout(f.name, array.elem, array.elem, 0, array.elem_size, None, "in", None, None,
                                     array.elem_role)
                bad = broken and draw(st.integers(0, 3)) == 0
                value = scalar_value(draw, elem, array.elem_role, view, arg, at, bad)
                put_int(payload, at, array.elem_size, int(value or 0))
                if bad:
                    arg.labels.append(f"{f.name}[{index}]")
        payload = bytes(payload)
    if array.count_field:
        counts.setdefault(array.count_field, n)
    if broken and draw(st.booleans()):
        arg.labels.append(f"{f.name}:pointer")
        pointer = _bad_pointer(draw, f.offset)
        if draw(st.booleans()):
            pointer = Pointer(f.offset, BUFFER, payload[: len(payload) // 2])
        arg.pointers.append(pointer)
        return
    arg.pointers.append(Pointer(f.offset, BUFFER, payload))


# --------------------------------------------------------------------------- whole requests


def _target(draw: Draw, layout: L.IoctlLayout, view: View, wrong: bool) -> tuple[int, str]:
    """The file the request is issued on: the client's device, or a file of the ioctl's kind."""
    if layout.target == L.DEVICE and not wrong:
        return view.device_fd, L.DEVICE
    files = [(fd, kind) for fd, kind in view.fds if kind not in ("eventfd",)]
    fitting = [(fd, kind) for fd, kind in files if kind == layout.target]
    if fitting and not wrong:
        return draw(st.sampled_from(fitting))
    others = [(fd, kind) for fd, kind in files if kind != layout.target]
    if layout.target != L.DEVICE:
        others.append((view.device_fd, L.DEVICE))
    return draw(st.sampled_from(others)) if others else (view.device_fd, L.DEVICE)


def _used_nrs(spec_family: str) -> set[int]:
    families = {name for name, fam in defs.FAMILIES.items() if fam.type == defs.FAMILIES[spec_family].type}
    return {s.nr for s in defs.IOCTLS if s.family in families}


def _request(draw: Draw, layout: L.IoctlLayout, mutation: str | None) -> tuple[int, str]:
    """The request number: one of the ioctl's sizes, or a broken one."""
    spec = layout.spec
    cmd = draw(st.sampled_from(spec.cmds))
    dir_, type_, nr, size = spec.dir, spec.type, spec.nr, ioc_size(cmd)
    if mutation == "short-size" and min(spec.sizes) > 0:
        size = draw(st.integers(0, min(spec.sizes) - 1))
    elif mutation == "long-size":
        size = spec.size + draw(st.sampled_from([1, 4, 8, 64, 0x3FFF - spec.size]))
    elif mutation == "dir":
        dir_ = draw(st.sampled_from([d for d in range(4) if d != spec.dir]))
    elif mutation == "unknown-nr":
        nr = draw(st.sampled_from(sorted(set(range(256)) - _used_nrs(spec.family))))
    elif mutation == "foreign-type":
        type_ = draw(st.sampled_from(FOREIGN_TYPES))
    else:
        return cmd, mutation or ""
    return ioc(dir_, type_, nr, size), mutation


@st.composite
def call_plans(draw: Draw, layout: L.IoctlLayout, view: View, mode: str | None = None,
               fixed: Mapping[str, int] | None = None) -> CallPlan:
    """A request for `layout`'s ioctl on the client of `view`; `fixed` pins field values."""
    mode = mode or draw(st.sampled_from(MODES))
    spec = layout.spec
    struct = layout.struct
    mutation = draw(st.sampled_from(REQUEST_MUTATIONS)) if mode == REQUEST else None
    inputs = [f.name for f in struct.fields if f.is_input and f.role not in (L.OUT,)
              and not f.role.startswith(L.OUT_PREFIX)]
    target_name = draw(st.sampled_from(inputs)) if mode == FIELD and inputs else None

    def broken(path: str) -> bool:
        if fixed and path in fixed:
            return False
        if mode == FIELD:
            return path == target_name
        if mode == CHAOS:
            return draw(st.integers(0, 2)) == 0
        return False

    arg = ArgDraw(struct.size)
    fill_struct(draw, struct, view, arg, 0, arg.buf, broken)
    for name, value in (fixed or {}).items():
        f = struct.field(name)
        put_int(arg.buf, f.offset, f.size, value)
        arg.values[name] = value
        arg.deadlines = [d for d in arg.deadlines if d.offset != f.offset]
    cmd, cmd_label = _request(draw, layout, mutation)
    fd, kind = _target(draw, layout, view, mutation == "wrong-file")
    labels = list(arg.labels)
    if mutation:
        labels.append(mutation)
    elif cmd_label:
        labels.append(cmd_label)
    if ioc_size(cmd) != spec.size and not mutation:
        labels.append(f"size{ioc_size(cmd)}")
    size = max(ioc_size(cmd), struct.size)
    data = bytes(arg.buf).ljust(size, b"\0")
    if mode == CHAOS and size > struct.size and draw(st.booleans()):
        data = data[: struct.size] + draw(st.binary(min_size=size - struct.size, max_size=size - struct.size))
    arg_kind = {"arg-null": NULL, "arg-guard": GUARD}.get(mutation or "", BUFFER)
    tickets = tuple((f.offset, f.size) for f in struct.fields
                    if f.base == "s32" and f.direction in ("out", "inout") and ioc_dir(cmd) & IOC_READ)
    if not ioc_dir(cmd) & IOC_WRITE and ioc_dir(spec.cmd) & IOC_WRITE:
        labels.append("no-input")
    return CallPlan(ioctl=spec.name, fd=fd, kind=kind, cmd=cmd, arg=data, pointers=tuple(arg.pointers),
                    deadlines=tuple(arg.deadlines), arg_kind=arg_kind, by_value=spec.by_value,
                    ticket_fields=tickets, labels=tuple(labels), client=view.client)


def ioctls_for(kind_present: Callable[[str], bool]) -> list[str]:
    """Names of every ioctl, those whose file the process holds first (for sampled_from's shrinking)."""
    names = [s.name for s in defs.IOCTLS]
    layouts = L.ioctl_layouts()
    return sorted(names, key=lambda n: (not kind_present(layouts[n].target), names.index(n)))


_DIGITS = re.compile(r"(\d+)$")


def dtype_sizes() -> dict[int, int]:
    """Element size of every drm_emudev_dtype member, from the digits ending its name (FP32 → 4)."""
    sizes = {}
    for name, value in defs.ENUMS["drm_emudev_dtype"].members.items():
        match = _DIGITS.search(name)
        sizes[value] = int(match.group(1)) // 8 if match else 1
    return sizes
