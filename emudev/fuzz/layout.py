"""Every ioctl argument and every packet, as the fuzzer sees them: derived from the uapi YAML.

``defs.IOCTLS`` gives each ioctl's struct, sizes and documented errnos; the spec model
(``emudev.uapi.gen``) adds what the generated bindings leave out: what a pointer points
to and which field counts it, and which kind of handle or fd a plain integer holds
(``handle:``, ``new:`` and ``fd:`` on fields, and an ioctl's ``fields:`` where two
ioctls use a struct differently). From those each field gets a *role*, the name of
the strategy that draws a valid value for it and breaks it. Every role comes from the
spec (flags, enums, pointers and their counts, strides, pads, directions, timeouts,
handle and fd kinds) except where drawing a *valid* value takes knowledge no uapi
spec holds: a BO size, and where in which BO a command stream lies. Only that is
hand-written, as data in ``VALID_VALUE_ROLES`` below. A field the spec says nothing
special about still gets a generic role from its name, so an ioctl added to the YAML
is fuzzed without any change here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from emudev.uapi import defs, gen
from emudev.uapi.types import IoctlSpec

# --------------------------------------------------------------------------- roles
# Integers with a meaning the strategies know how to make valid (handles of the
# fuzzing client's state, fds of its process, points, times) and how to break.
ZERO = "zero"            # pad*/reserved*: must be zero
OUT = "out"              # written by the device; input ignored
FLAGS = "flags"          # a bit set of the field's flagset
ENUM = "enum"            # one member of the field's enum
COUNT = "count"          # number of elements of the arrays naming it in points-to
STRIDE = "stride"        # bytes between elements of an array of structs
ARRAY = "array"          # a user pointer to points-to
POINTER = "pointer"      # a user pointer the spec says nothing more about
TIMEOUT = "timeout"      # absolute CLOCK_MONOTONIC deadline of a wait
DEADLINE = "deadline"    # absolute CLOCK_MONOTONIC hint (never waited for)
POINT = "point"          # a syncobj timeline point
STRING = "string"        # char[N] inside the struct
STRUCT = "struct"        # a nested struct (packets)
INT = "int"              # anything else: small values are valid-looking
DEVICE_VA = "device_va"  # packets: an address in the client's device address space
GEM = "gem"              # a GEM handle of the calling file
GEM_NEW = "gem_new"      # a handle number not in use yet
SYNCOBJ = "syncobj"      # a syncobj handle of the calling file
CTX = "ctx"              # a context id of the calling file
SEQNO = "seqno"          # a job seqno of the context drawn before it
FLINK = "flink"          # a global GEM name
BO_SIZE = "bo_size"      # a BO size
STREAM_HANDLE = "stream_handle"  # a BO holding a command stream (SUBMIT)
STREAM_OFFSET = "stream_offset"
STREAM_SIZE = "stream_size"
ANY_HANDLE = "handle"    # a handle of some kind: GEM or syncobj
FD = "fd"                # "fd" or "fd:kind,kind": a descriptor of the calling process
OUT_PREFIX = "out:"      # "out:gem": the device returns a new GEM handle there

# Resources a successful call hands back in an out/inout field of that role.
RESOURCE_ROLES = (GEM, SYNCOBJ, CTX, SEQNO, FLINK)
HANDLE_ROLES = (GEM, GEM_NEW, SYNCOBJ, CTX, SEQNO, FLINK, ANY_HANDLE)
FD_KINDS = ("device", "dma_buf", "sync_file", "syncobj", "sw_sync", "eventfd")

# What the spec's handle: kinds become.
_HANDLE_ROLES = {"gem": GEM, "syncobj": SYNCOBJ, "ctx": CTX, "seqno": SEQNO, "flink": FLINK}
# A number the caller picks that is not in use yet (new: true): only GEM has a strategy
# drawing one; another kind gets a plain integer.
_NEW_ROLES = {GEM: GEM_NEW}

# "struct.field": fields whose valid values the fuzzer draws from its own knowledge of the
# device, which the spec cannot state: how big a BO may be, and which BO holds a command
# stream, at which offset and of which size. They take precedence over the spec's kind
# (cmd_handle is a GEM handle, but one holding a stream).
VALID_VALUE_ROLES: dict[str, str] = {
    "drm_emudev_bo_create.size": BO_SIZE,
    "drm_emudev_submit.cmd_handle": STREAM_HANDLE,
    "drm_emudev_submit.cmd_offset": STREAM_OFFSET,
    "drm_emudev_submit.cmd_size": STREAM_SIZE,
}

# Bits never set, whatever the mode: they make the call wait far longer than the 50 ms
# every wait here is bounded by (TRANSFER's WAIT_FOR_SUBMIT waits up to 5 s for a fence).
NEVER_SET: dict[str, int] = {
    "drm_syncobj_transfer.flags": defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT,
}

# The file an ioctl of a family is issued on: DRM families (dispatch by nr) go to the
# device node; the others are named after the file they belong to.
DEVICE = "device"

_PAD_RE = re.compile(r"^(pad|reserved)\d*$")
_TIME_RE = re.compile(r"timeout")
_DEADLINE_RE = re.compile(r"deadline")
_POINT_RE = re.compile(r"^(?!zero_)(\w+_)?points?$")
_VA_RE = re.compile(r"^(va|.*_va)$")


@dataclass(frozen=True)
class ArrayLayout:
    """What a pointer field points to: ``elem`` elements, counted by a field or a constant."""

    elem: str
    elem_size: int
    count_field: str | None
    capacity: int | None
    elem_role: str
    elem_struct: StructLayout | None
    stride_field: str | None = None


@dataclass(frozen=True)
class FieldLayout:
    """One field of a struct with its role; ``array`` for pointers, ``struct`` for nested structs."""

    name: str
    type: str
    base: str
    offset: int
    size: int
    count: int | None
    direction: str
    flags: str | None
    enum: str | None
    role: str
    since: str | None = None
    array: ArrayLayout | None = None
    struct: StructLayout | None = None
    counts: tuple[str, ...] = ()
    strides: tuple[str, ...] = ()
    never: int = 0

    @property
    def signed(self) -> bool:
        return self.base.startswith("s")

    @property
    def elem_size(self) -> int:
        return self.size // (self.count or 1)

    @property
    def is_input(self) -> bool:
        return self.direction in ("in", "inout")


@dataclass(frozen=True)
class StructLayout:
    name: str
    size: int
    fields: tuple[FieldLayout, ...]

    def field(self, name: str) -> FieldLayout:
        return next(f for f in self.fields if f.name == name)


@dataclass(frozen=True)
class IoctlLayout:
    """An ioctl, its argument's layout and the kind of file it is issued on."""

    spec: IoctlSpec
    struct: StructLayout
    target: str

    @property
    def name(self) -> str:
        return self.spec.name


@cache
def spec_model() -> gen.Model:
    """The resolved YAML (cached: parsing takes a few hundred ms)."""
    return gen.build_model(gen.load_documents())


def target_kind(family: str) -> str:
    """The kind of file ioctls of ``family`` are issued on."""
    return DEVICE if defs.FAMILIES[family].dispatch == "nr" else family


@cache
def ioctl_layouts() -> dict[str, IoctlLayout]:
    """A layout for every ioctl of ``defs.IOCTLS``, by name."""
    return layouts_of(spec_model(), defs.IOCTLS)


def layouts_of(model: gen.Model, specs: tuple[IoctlSpec, ...]) -> dict[str, IoctlLayout]:
    """Layouts of `specs` as `model` describes their structs (a model with extra ioctls, in tests)."""
    cache: dict[tuple[str, str | None], StructLayout] = {}
    return {spec.name: IoctlLayout(spec, _struct(model, model.ioctls[spec.name].struct, spec.name, cache),
                                   target_kind(spec.family)) for spec in specs}


@cache
def packet_layouts() -> dict[str, StructLayout]:
    """The layout of every packet of ``defs.PACKETS``, by packet name."""
    return {name: struct_layout(spec_model().packets[name].struct) for name in defs.PACKETS_BY_NAME}


@cache
def struct_layout(name: str, ioctl: str | None = None) -> StructLayout:
    """Roles of every field of struct ``name`` (as ``ioctl`` uses it: its ``fields:`` in the spec)."""
    return _struct(spec_model(), name, ioctl, {})


def _struct(model: gen.Model, name: str, ioctl: str | None,
            cache: dict[tuple[str, str | None], StructLayout]) -> StructLayout:
    if (name, ioctl) in cache:
        return cache[name, ioctl]
    struct = model.structs[name]
    used = model.ioctls[ioctl].fields_of(struct) if ioctl is not None else struct.fields
    counted: dict[str, list[str]] = {}
    for field in struct.fields:
        count = _points_to(field)[1] if field.points_to else None
        if count is not None and count not in model.constants:
            counted.setdefault(count, []).append(field.name)
    strides = {f.name: _strided(struct, f.name) for f in struct.fields if f.name.endswith("_stride")}
    fields = []
    # The role follows what the ioctl makes of a field; the direction stays the struct's, as
    # drm_ioctl() copies the whole struct back and the fuzzer reads returned fds from it.
    for field, as_used in zip(struct.fields, used, strict=True):
        role = _role(struct.name, as_used, counted, strides)
        array = _array(model, struct, as_used, strides, cache) if field.is_pointer and field.points_to else None
        nested = _struct(model, field.struct, None, cache) if field.struct else None
        never = NEVER_SET.get(f"{struct.name}.{field.name}", 0)
        fields.append(FieldLayout(
            name=field.name, type=field.type, base=field.base, offset=field.offset, size=field.size,
            count=field.count, direction=field.direction, flags=field.flags, enum=field.enum, role=role,
            since=field.since, array=array, struct=nested, counts=tuple(counted.get(field.name, ())),
            strides=tuple(strides.get(field.name, ())), never=never))
    cache[name, ioctl] = StructLayout(struct.name, struct.size, tuple(fields))
    return cache[name, ioctl]


def _hint(struct: str, field: gen.Field) -> str | None:
    """The role of a field (or of its elements) if drawing it valid is fuzzer knowledge or the spec names a kind."""
    return VALID_VALUE_ROLES.get(f"{struct}.{field.name}") or _declared_role(field)


def _declared_role(field: gen.Field) -> str | None:
    """What the spec's ``handle:``/``fd:`` make of a field: ``gem``, ``gem_new``, ``out:gem``, ``fd:a,b``."""
    if field.handle is not None:
        role = _HANDLE_ROLES[field.handle]
        if field.direction == "out":
            return OUT_PREFIX + role
        return _NEW_ROLES.get(role, INT) if field.new else role
    if field.fd:
        return f"{FD}:{','.join(field.fd)}"
    return None


def _role(struct: str, field: gen.Field, counted: dict[str, list[str]], strides: dict[str, list[str]]) -> str:
    """The role of a field as its ioctl uses it: a hint, else what its spec entry and name say."""
    if field.name in counted:
        return COUNT
    if strides.get(field.name):
        return STRIDE
    if field.is_pointer:
        return ARRAY if field.points_to else POINTER
    hint = _hint(struct, field)
    if hint is not None:
        return hint
    if field.struct:
        return STRUCT
    if field.direction == "out":
        return OUT
    if _PAD_RE.match(field.name) and field.count is None:
        return ZERO
    if field.flags:
        return FLAGS
    if field.enum:
        return ENUM
    if field.base == "char":
        return STRING
    if field.direction == "inout":
        return OUT
    if _TIME_RE.search(field.name) and field.base in ("s64", "u64"):
        return TIMEOUT
    if _DEADLINE_RE.search(field.name) and field.base in ("s64", "u64"):
        return DEADLINE
    if _POINT_RE.search(field.name):
        return POINT
    if _VA_RE.match(field.name) and field.base == "u64":
        return DEVICE_VA
    if field.named_like_fd and field.base == "s32":
        return FD
    if field.named_like_handle:
        return ANY_HANDLE
    return INT


def _points_to(field: gen.Field) -> tuple[str, str]:
    if field.pointee is None:
        raise ValueError(f"points-to {field.points_to!r} is not ELEM[COUNT]")
    return field.pointee


def _strided(struct: gen.Struct, stride_field: str) -> list[str]:
    """Pointer fields a ``<stem>_stride`` field steps through: those whose element struct ends in ``_<stem>``."""
    stem = stride_field.removesuffix("_stride")
    found = []
    for field in struct.fields:
        if field.is_pointer and field.points_to:
            elem = _points_to(field)[0]
            if elem == stem or elem.endswith(f"_{stem}"):
                found.append(field.name)
    return found


def _array(model: gen.Model, struct: gen.Struct, field: gen.Field, strides: dict[str, list[str]],
           cache: dict[tuple[str, str | None], StructLayout]) -> ArrayLayout:
    assert field.points_to is not None
    elem, count = _points_to(field)
    constant = model.constants.get(count)
    elem_struct = _struct(model, elem, None, cache) if elem in model.structs else None
    elem_size = elem_struct.size if elem_struct else gen.SCALAR_SIZES[elem]
    hint = _hint(struct.name, field)
    if hint is not None:
        elem_role = hint
    elif elem_struct is not None:
        elem_role = STRUCT
    elif elem == "char":
        elem_role = STRING
    elif _POINT_RE.search(field.name):
        elem_role = POINT
    elif field.named_like_handle:
        elem_role = ANY_HANDLE
    else:
        elem_role = INT
    stride_field = next((name for name, arrays in strides.items() if field.name in arrays), None)
    return ArrayLayout(elem=elem, elem_size=elem_size, count_field=None if constant else count,
                       capacity=constant.value if constant else None, elem_role=elem_role,
                       elem_struct=elem_struct, stride_field=stride_field)


_NON_EMPTY_RE = re.compile(r"at least one|non-empty", re.IGNORECASE)


def needs_a_flag(flagset: str) -> bool:
    """Whether the flagset's doc says a valid value has at least one bit ("at least one", "non-empty")."""
    return bool(_NON_EMPTY_RE.search(defs.FLAGSETS[flagset].doc))


def base_role(role: str) -> str:
    """``out:gem`` → ``gem``, ``fd:dma_buf`` → ``fd``."""
    return role.removeprefix(OUT_PREFIX).split(":")[0]


def fd_kinds(role: str) -> tuple[str, ...]:
    """The kinds an ``fd:a,b`` role prefers; every kind for a bare ``fd``."""
    _, _, kinds = role.partition(":")
    return tuple(kinds.split(",")) if kinds else FD_KINDS


def leaves(layout: StructLayout, prefix: str = "", base: int = 0) -> list[tuple[str, FieldLayout, int]]:
    """Every scalar field of a struct, nested structs and array elements flattened: (path, field, offset)."""
    found: list[tuple[str, FieldLayout, int]] = []
    for field in layout.fields:
        path = f"{prefix}{field.name}"
        if field.struct is not None:
            found += leaves(field.struct, f"{path}.", base + field.offset)
        elif field.count and field.base != "char":
            found += [(f"{path}[{i}]", field, base + field.offset + i * field.elem_size) for i in range(field.count)]
        else:
            found.append((path, field, base + field.offset))
    return found
