"""Generate the uapi bindings, C header and reference from ``spec/*.yaml``.

The YAML files are the only place where an ioctl number, a struct layout or a
flag value is written down (DESIGN.md, promise 2); everything else is generated
and committed, and ``--check`` fails when a committed file is stale. This is
the kernel's netlink "declare, then generate" approach applied to ioctls.

Outputs: ``emudev/uapi/defs.py`` (ctypes bindings used by the device),
``include/uapi/drm/emudev_accel.h`` (the driver's C header, in the style of
``rocket_accel.h``) and ``docs/uapi.md``.

Spec schema, one file per ioctl family (an ISA document, below, is the other kind)::

    family: name                 # "drm", "emudev", "dma_buf", ...
    type: "d"                    # the _IOC_TYPE character
    type-macro: DRM_IOCTL_BASE   # optional: C name of that character
    origin: kernel | driver      # transcribed kernel ABI, or this driver's own uapi
    dispatch: nr | cmd           # drm_ioctl() matches _IOC_NR; dma-buf & co. the whole cmd
    unknown-errno: EINVAL        # errno for a request the family does not know
    errors: [{errno, when}]      # what any ioctl of the family may fail with (unplug, signals)
    doc: ...
    prefix: DRM_EMUDEV           # driver only: C prefix of generated names
    version: {major, minor}      # driver only: uapi (and DRM driver) version
    driver: {name, desc, date, patchlevel}   # driver only: DRM_IOCTL_VERSION strings
    constants: [{name, value, doc}]
    enums: [{name, doc, members: [{name, value, doc}]}]
    flags: [{name, doc, mask, members: [{name, value, doc} | NAME]}]
        # mask: "all" (OR of the members), a number, or a constant's name;
        # a bare NAME member reuses a constant defined elsewhere.
    structs:
      - name: ...
        doc: ...
        kernel-abi: {waive: [rule, ...], why: ...}   # kernel transcriptions only
        fields:
          - name: ...
            type: u8|s8|u16|s16|u32|s32|u64|s64|ptr, or TYPE[N]; char only as char[N];
                  f32 (the ISA only); or a struct defined earlier (same or earlier file)
            doc: ...
            dir: in | out | inout          # default in
            flags: FLAGSET                 # for flag fields
            enum: ENUM                     # for selector fields
            points-to: "u32[count]"        # what a ptr field points at
            handle: gem|syncobj|ctx|seqno|flink   # the kind of object the integer names (below)
            new: true                      # with handle, on an input: a number not yet in use
            fd: KIND | [KIND, ...]         # an input fd of the calling process, KIND one of
                                           # dma_buf, sync_file, syncobj, eventfd
            since: label                   # added later: the struct has an older, shorter size
            kernel-c-type: size_t          # the kernel header's own C type, when not a __u/__s type
            kernel-implicit: true          # padding the kernel header leaves implicit
    ioctls:
      - name: DRM_IOCTL_...        # the C macro
        nr: 0x0c | index: 0x00     # index: driver ioctls, nr = DRM_COMMAND_BASE + index
        dir: io | ior | iow | iowr
        struct: NAME               # or, for a scalar argument:
        scalar: {struct, field, type, doc, points-to}
        by-value: true             # the argument is the value itself, not its address
        variants: [{name, size, doc}]   # other request numbers for the same nr
        permissions: [render_allow, auth, master, root_only]
        requires: [gem, syncobj, syncobj_timeline, modeset]   # checked before the handler
        errors: [{errno, when}]
        fields: {NAME: {dir, handle, fd}}   # what a field of a shared struct means for this ioctl
        doc: ...
    c-helpers:                     # driver only: C functions the header offers its users
      - name: emudev_claim_fd      # the function the code defines
        doc: ...                   # kernel-doc body; its line breaks stay, for "@arg:" and "Return:"
        code: |                    # verbatim C, one "static inline" definition

``handle`` and ``fd`` say what a plain integer refers to, so that tools (the
fuzzer, the reference) need not guess from its name: a ``handle`` on an ``in``
field names an existing object of that kind (GEM handle, syncobj handle, context
id, job seqno, flink name), on an ``out`` field the device returns a new one
there, and on an ``inout`` field the caller passes an existing one; ``new: true``
marks an input where the caller picks a number not yet in use
(drm_gem_change_handle.new_handle). ``fd`` lists the kinds of file an input fd
may be; an fd the device returns takes no ``fd`` (the device hands out fds as
tickets, whatever their kind). On a ``ptr`` with ``points-to``, both describe the
elements it points at. A struct two ioctls share with different meanings
(drm_prime_handle, drm_syncobj_handle) keeps the union in its fields; each
ioctl's ``fields`` overrides ``dir``, ``handle`` and ``fd`` of the named fields
for that ioctl, and ``dir`` there may only narrow ``inout`` to ``in`` or ``out``.

The command-stream ISA is a document of its own: it has ``packets`` and no
``type``, ``type-macro``, ``dispatch``, ``unknown-errno``, ``driver``, ``ioctls``
or ``c-helpers``; its struct fields take no ``dir``, ``since``, ``points-to``, ``handle``,
``new``, ``fd`` or ``kernel-*`` keys::

    family: emudev_isa
    origin: driver
    prefix: DRM_EMUDEV             # names below are derived from it
    version: {major, minor}        # gives DRM_EMUDEV_ISA_VERSION = (major << 16) | minor
    doc: ...                       # its paragraphs (two blank lines in >-) are kept
    constants, enums, flags, structs: as above
        # needs: the constant DRM_EMUDEV_PKT_ALIGN, the enum drm_emudev_engine and
        # the struct drm_emudev_pkt_header (with opcode and dwords fields)
    packets:
      - name: CONV                 # upper case
        opcode: 0x10               # unique; DRM_EMUDEV_OP_CONV in the generated enum drm_emudev_opcode
        engine: DRM_EMUDEV_ENGINE_CONV   # omitted by control packets, which carry an engine field
        variable-length: true      # NOP only: dwords may exceed the packet's size
        doc: ...
        fields: [...]              # as struct fields; the generated struct drm_emudev_pkt_conv
                                   # starts with "header" (struct drm_emudev_pkt_header)

C helpers do for C callers what the uapi alone cannot, such as claiming an
outgoing fd's ticket, so that no caller re-implements a convention. The header
emits them after the ioctl definitions, under ``#if
defined(DRM_EMUDEV_HAVE_C_HELPERS)`` (POSIX.1-2008 user space only, see
``_C_HELPERS_AVAILABILITY``), and they may use the C library headers of
``_C_HELPER_INCLUDES``. In a folded (``>-``) doc, one blank line is a line
break and two make an empty comment line.

Generation needs a well-formed spec; the uapi *rules* (padding, pointers,
documentation, ...) are checked by ``emudev.uapi.lint``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from emudev.uapi.types import IOC_NONE, IOC_READ, IOC_WRITE, ioc

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = Path(__file__).resolve().parent / "spec"
DEFS_PATH = "emudev/uapi/defs.py"
HEADER_PATH = "include/uapi/drm/emudev_accel.h"
DOCS_PATH = "docs/uapi.md"
GENERATOR = "python -m emudev.uapi.gen"

SCALAR_SIZES = {
    "u8": 1,
    "s8": 1,
    "char": 1,
    "u16": 2,
    "s16": 2,
    "u32": 4,
    "s32": 4,
    "f32": 4,
    "u64": 8,
    "s64": 8,
    "ptr": 8,
}
DIRECTIONS = {"io": IOC_NONE, "ior": IOC_READ, "iow": IOC_WRITE, "iowr": IOC_READ | IOC_WRITE}
FIELD_DIRECTIONS = ("in", "out", "inout")
_TYPE_RE = re.compile(r"^(?P<base>[a-z0-9_]+)(?:\[(?P<count>[1-9][0-9]*)\])?$")
_POINTS_TO_RE = re.compile(r"^(?P<elem>\w+)\[(?P<count>\w+)\]$")
# Names that say "handle" or "fd": the linter asks such fields for a handle: or fd: kind.
_HANDLE_NAME_RE = re.compile(r"^(handles?|\w+_handle)$")
_FD_NAME_RE = re.compile(r"^(fd\d*|\w+_fd)$")

_TOP_KEYS = {
    "family",
    "type",
    "type-macro",
    "origin",
    "dispatch",
    "unknown-errno",
    "errors",
    "doc",
    "prefix",
    "version",
    "driver",
    "constants",
    "enums",
    "flags",
    "structs",
    "ioctls",
    "c-helpers",
    "packets",
}
# What an ioctl family has and an ISA document (the one with packets) must not.
_IOCTL_ONLY_TOP_KEYS = ("type", "type-macro", "dispatch", "unknown-errno", "errors", "driver", "ioctls",
                        "c-helpers")
# Field keys that mean nothing for bytes in a command stream.
_IOCTL_ONLY_FIELD_KEYS = ("dir", "since", "points-to", "handle", "new", "fd", "kernel-c-type", "kernel-implicit")
_PACKET_KEYS = {"name", "opcode", "engine", "variable-length", "doc", "fields"}
_PACKET_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_FIELD_KEYS = {
    "name",
    "type",
    "doc",
    "dir",
    "flags",
    "enum",
    "points-to",
    "handle",
    "new",
    "fd",
    "since",
    "kernel-c-type",
    "kernel-implicit",
}
HANDLE_KINDS = ("gem", "syncobj", "ctx", "seqno", "flink")
FD_KINDS = ("dma_buf", "sync_file", "syncobj", "eventfd")
# What an ioctl's ``fields`` may say about a field of its struct.
_OVERRIDE_KEYS = {"dir", "handle", "fd"}
_IOCTL_KEYS = {
    "name",
    "nr",
    "index",
    "dir",
    "struct",
    "scalar",
    "by-value",
    "variants",
    "permissions",
    "requires",
    "errors",
    "fields",
    "doc",
}


class SpecError(Exception):
    """A spec that cannot be turned into a model: a schema error, not a uapi-rule violation."""

    def __init__(self, path: str, message: str, rule: str = "schema") -> None:
        super().__init__(f"{path}: {rule}: {message}")
        self.path = path
        self.rule = rule
        self.message = message


class HexInt(int):
    """An integer the spec wrote in hex, so generated code and docs keep its base."""


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that remembers which integers were written in hex."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    return HexInt(value) if node.value.lower().lstrip("+-").startswith("0x") else value


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Field:
    """A struct member with its computed LP64 offset."""

    name: str
    type: str
    base: str
    count: int | None
    offset: int
    size: int
    doc: str
    direction: str
    flags: str | None
    enum: str | None
    points_to: str | None
    since: str | None
    kernel_c_type: str | None
    kernel_implicit: bool
    align: int
    struct: str | None = None
    handle: str | None = None
    new: bool = False
    fd: tuple[str, ...] = ()

    @property
    def is_pointer(self) -> bool:
        return self.base == "ptr"

    @property
    def pointee(self) -> tuple[str, str] | None:
        """``points-to`` as (element type, count): ("u32", "count_handles"); None if absent or malformed."""
        match = _POINTS_TO_RE.match((self.points_to or "").replace(" ", ""))
        return (match["elem"], match["count"]) if match else None

    @property
    def named_like_handle(self) -> bool:
        return bool(_HANDLE_NAME_RE.match(self.name))

    @property
    def named_like_fd(self) -> bool:
        return bool(_FD_NAME_RE.match(self.name))

    @property
    def declares_kind(self) -> bool:
        """Whether the spec says what the integer refers to (a handle of some kind, or an fd)."""
        return self.handle is not None or bool(self.fd)

    @property
    def elem_size(self) -> int:
        return self.size // (self.count or 1)

    @property
    def is_float(self) -> bool:
        return self.base == "f32"


@dataclass(frozen=True)
class Struct:
    """A struct with its LP64 (x86-64, arm64) layout."""

    name: str
    doc: str
    family: str
    path: str
    fields: tuple[Field, ...]
    size: int
    waive: tuple[str, ...] = ()
    waive_why: str = ""
    scalar_of: str | None = None
    align: int = 1
    packet: str | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every size a header has had: each ``since`` group starts a newer, longer form."""
        starts = {field.offset for field in self.fields if field.since}
        return tuple(sorted(starts | {self.size}))


@dataclass(frozen=True)
class Constant:
    name: str
    value: int
    doc: str
    family: str
    path: str


@dataclass(frozen=True)
class FlagSetDef:
    name: str
    doc: str
    members: tuple[str, ...]
    mask: int | None
    family: str
    path: str


@dataclass(frozen=True)
class EnumDef:
    name: str
    doc: str
    members: tuple[str, ...]
    family: str
    path: str


@dataclass(frozen=True)
class Variant:
    name: str
    size: int
    doc: str


@dataclass(frozen=True)
class Ioctl:
    name: str
    family: str
    path: str
    type: int
    nr: int
    index: int | None
    dir_name: str
    struct: str
    size: int
    sizes: tuple[int, ...]
    permissions: tuple[str, ...]
    requires: tuple[str, ...]
    errors: tuple[tuple[str, str], ...]
    doc: str
    variants: tuple[Variant, ...]
    by_value: bool
    overrides: tuple[Field, ...] = ()

    @property
    def dir(self) -> int:
        return DIRECTIONS[self.dir_name]

    def fields_of(self, struct: Struct) -> tuple[Field, ...]:
        """``struct``'s fields as this ioctl uses them: its ``fields`` overrides replace the struct's."""
        overridden = {field.name: field for field in self.overrides}
        return tuple(overridden.get(field.name, field) for field in struct.fields)

    @property
    def cmd(self) -> int:
        return ioc(self.dir, self.type, self.nr, self.size)

    def variant_cmd(self, variant: Variant) -> int:
        return ioc(self.dir, self.type, self.nr, variant.size)


@dataclass(frozen=True)
class CHelper:
    """A static inline C function of the driver header; ``doc`` keeps its line breaks."""

    name: str
    doc: str
    code: str
    family: str
    path: str


@dataclass(frozen=True)
class Packet:
    """A command-stream packet: ``struct`` starts with the header and is the whole packet."""

    name: str
    opcode: int
    opcode_name: str
    engine: str | None
    doc: str
    struct: str
    variable_length: bool
    family: str
    path: str


@dataclass(frozen=True)
class Family:
    """An ioctl family (``kind`` "ioctl") or a command-stream ISA (``kind`` "isa", no type)."""

    name: str
    path: str
    kind: str
    type: int | None
    doc: str
    origin: str
    dispatch: str | None
    unknown_errno: str | None
    errors: tuple[tuple[str, str], ...]
    version: tuple[int, int] | None
    driver: Mapping[str, Any] | None
    constants: tuple[str, ...]
    enums: tuple[str, ...]
    flagsets: tuple[str, ...]
    structs: tuple[str, ...]
    ioctls: tuple[str, ...]
    helpers: tuple[str, ...]
    packets: tuple[str, ...] = ()
    prefix: str | None = None


@dataclass
class Model:
    """Every spec file resolved: names are global, as they are in C."""

    families: dict[str, Family]
    constants: dict[str, Constant]
    enums: dict[str, EnumDef]
    flagsets: dict[str, FlagSetDef]
    structs: dict[str, Struct]
    ioctls: dict[str, Ioctl]
    helpers: dict[str, CHelper]
    packets: dict[str, Packet]

    def ioctl_fields(self, name: str) -> tuple[Field, ...]:
        """The fields of ioctl ``name``'s argument as that ioctl uses them (see ``Ioctl.fields_of``)."""
        ioctl = self.ioctls[name]
        return ioctl.fields_of(self.structs[ioctl.struct])

    def driver_family(self) -> Family:
        drivers = [
            family for family in self.families.values() if family.origin == "driver" and family.kind == "ioctl"
        ]
        if len(drivers) != 1:
            raise SpecError("spec", f"expected exactly one family with origin: driver, found {len(drivers)}")
        return drivers[0]

    def driver_isas(self) -> list[Family]:
        """The driver's command-stream ISAs: its header and docs carry them after its ioctls."""
        return [family for family in self.families.values() if family.origin == "driver" and family.kind == "isa"]


# --------------------------------------------------------------------------- loading


def load_documents(spec_dir: Path = SPEC_DIR) -> list[tuple[str, dict[str, Any]]]:
    """Read every ``*.yaml`` of ``spec_dir`` in name order, keyed by a repo-relative path."""
    documents = []
    for path in sorted(spec_dir.glob("*.yaml")):
        shown = _display_path(path)
        documents.append((shown, parse_document(path.read_text(), shown)))
    return documents


def parse_document(text: str, path: str) -> dict[str, Any]:
    """Parse one spec file; it must be a mapping."""
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as error:
        raise SpecError(path, f"not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(path, "a spec file must be a YAML mapping")
    return data


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _check_keys(item: Any, allowed: set[str], required: Iterable[str], where: str, path: str) -> None:
    if not isinstance(item, Mapping):
        raise SpecError(path, f"{where}: expected a mapping, got {item!r}")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise SpecError(path, f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    missing = [key for key in required if key not in item]
    if missing:
        raise SpecError(path, f"{where}: missing key(s) {', '.join(missing)}")


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _lines(value: Any) -> str:
    """Like ``_text`` but line by line: a kernel-doc comment needs its ``@arg:`` and ``Return:`` lines."""
    return "\n".join(_text(line) for line in str(value).strip().split("\n")) if value is not None else ""


# --------------------------------------------------------------------------- building


def build_model(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> Model:
    """Resolve names, compute layouts and request numbers; raise SpecError on schema errors."""
    builder = _Builder()
    for path, data in documents:
        builder.add_family(path, data)
    builder.define_values(documents)
    builder.resolve_flags(documents)
    builder.define_structs(documents)
    builder.check_packets()
    builder.define_ioctls(documents)
    builder.define_helpers(documents)
    return builder.model()


class _Builder:
    """Builds the model in phases so that any spec may refer to names another defines."""

    def __init__(self) -> None:
        self.families: dict[str, dict[str, Any]] = {}
        self.constants: dict[str, Constant] = {}
        self.enums: dict[str, EnumDef] = {}
        self.flagsets: dict[str, FlagSetDef] = {}
        self.structs: dict[str, Struct] = {}
        self.ioctls: dict[str, Ioctl] = {}
        self.helpers: dict[str, CHelper] = {}
        self.packets: dict[str, Packet] = {}

    def add_family(self, path: str, data: Mapping[str, Any]) -> None:
        if "packets" in data:
            self._add_isa(path, data)
            return
        _check_keys(data, _TOP_KEYS, ("family", "type", "origin", "dispatch", "unknown-errno"), "file", path)
        name = str(data["family"])
        type_char = str(data["type"])
        if len(type_char) != 1:
            raise SpecError(path, f"type must be one character, got {type_char!r}")
        if data["origin"] not in ("kernel", "driver") or data["dispatch"] not in ("nr", "cmd"):
            raise SpecError(path, "origin must be kernel|driver and dispatch nr|cmd")
        if name in self.families:
            raise SpecError(path, f"family {name} is declared twice")
        if data["origin"] == "driver" and not {"prefix", "version", "driver"} <= set(data):
            raise SpecError(path, "a driver family needs prefix, version and driver")
        self.families[name] = {
            "path": path,
            "data": data,
            "kind": "ioctl",
            "type": ord(type_char),
            "names": _names(),
        }

    def _add_isa(self, path: str, data: Mapping[str, Any]) -> None:
        """A command-stream ISA: packets in a BO, not ioctls; names derive from its prefix."""
        _check_keys(data, _TOP_KEYS, ("family", "origin", "prefix", "version"), "file", path)
        ioctl_only = [key for key in _IOCTL_ONLY_TOP_KEYS if key in data]
        if ioctl_only:
            raise SpecError(
                path,
                f"packets: a document with packets is an ISA, which has no {', '.join(ioctl_only)}",
            )
        name = str(data["family"])
        if data["origin"] not in ("kernel", "driver"):
            raise SpecError(path, "origin must be kernel|driver")
        if name in self.families:
            raise SpecError(path, f"family {name} is declared twice")
        version = data["version"]
        if not isinstance(version, Mapping) or set(version) != {"major", "minor"}:
            raise SpecError(path, "version needs {major, minor}")
        if not isinstance(data["packets"], list):
            raise SpecError(path, "packets: expected a list")
        self.families[name] = {"path": path, "data": data, "kind": "isa", "type": None, "names": _names()}

    # values: constants, enums, flag members -----------------------------------

    def define_values(self, documents: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for path, data in documents:
            family = str(data["family"])
            self._family_constants(family, path, data)
            for item in data.get("constants") or ():
                _check_keys(item, {"name", "value", "doc"}, ("name", "value"), "constant", path)
                self._constant(family, path, item, "constants")
            for item in data.get("enums") or ():
                self._enum(family, path, item)
            for item in data.get("flags") or ():
                _check_keys(item, {"name", "doc", "mask", "members"}, ("name", "members"), "flag set", path)
                for member in item["members"] or ():
                    if isinstance(member, Mapping):
                        _check_keys(member, {"name", "value", "doc"}, ("name", "value"), "flag", path)
                        self._constant(family, path, member, None)

    def _family_constants(self, family: str, path: str, data: Mapping[str, Any]) -> None:
        info = self.families[family]
        if info["kind"] == "isa":
            self._isa_values(family, path, data)
            return
        if data.get("type-macro"):
            doc = f"ioctl type of the {family} family ('{data['type']}')."
            self._add_constant(
                Constant(data["type-macro"], HexInt(info["type"]), doc, family, path), "constants"
            )
        version = data.get("version")
        if version is None:
            return
        prefix = data.get("prefix")
        _check_keys(
            data.get("driver"),
            {"name", "desc", "date", "patchlevel"},
            ("name", "desc", "date"),
            "driver",
            path,
        )
        if not prefix or not isinstance(version, Mapping) or set(version) != {"major", "minor"}:
            raise SpecError(path, "version needs {major, minor}, a prefix and a driver")
        major, minor = int(version["major"]), int(version["minor"])
        for suffix, value, doc in (
            (
                "UAPI_VERSION_MAJOR",
                major,
                "Major version of this uapi; bumped only for incompatible changes.",
            ),
            ("UAPI_VERSION_MINOR", minor, "Minor version of this uapi; bumped when something is added."),
            ("UAPI_VERSION", HexInt(major << 16 | minor), "(major << 16) | minor, as the device reports it."),
        ):
            self._add_constant(Constant(f"{prefix}_{suffix}", value, doc, family, path), "constants")

    def _isa_values(self, family: str, path: str, data: Mapping[str, Any]) -> None:
        """DRM_EMUDEV_ISA_VERSION, and the opcode enum the header's opcode field names."""
        prefix = str(data["prefix"])
        major, minor = int(data["version"]["major"]), int(data["version"]["minor"])
        doc = (
            f"Version of the command-stream ISA, (major << 16) | minor, here {major}.{minor}; "
            f"{prefix}_PARAM_ISA_VERSION reports the device's."
        )
        version = Constant(f"{prefix}_ISA_VERSION", HexInt(major << 16 | minor), doc, family, path)
        self._add_constant(version, "constants")
        members = []
        for item in data["packets"]:
            where = f"packet {item.get('name', '?')}" if isinstance(item, Mapping) else "packet"
            _check_keys(item, _PACKET_KEYS, ("name", "opcode", "fields"), where, path)
            name = str(item["name"])
            opcode = item["opcode"]
            if not _PACKET_NAME_RE.match(name):
                raise SpecError(path, f"packet {name}: the name must be an upper-case identifier")
            if not isinstance(opcode, int) or isinstance(opcode, bool) or opcode < 0:
                raise SpecError(path, f"packet {name}: opcode must be a non-negative integer")
            doc = f"Opcode of the {name} packet, struct {_packet_struct_name(prefix, name)}."
            members.append({"name": f"{prefix}_OP_{name}", "value": opcode, "doc": doc})
        enum = {
            "name": f"{prefix.lower()}_opcode",
            "doc": f"Packet opcodes, in struct {prefix.lower()}_pkt_header.opcode; one per packet of the ISA.",
            "members": members,
        }
        self._enum(family, path, enum)

    def _constant(self, family: str, path: str, item: Mapping[str, Any], group: str | None) -> str:
        if not isinstance(item["value"], int) or isinstance(item["value"], bool):
            raise SpecError(path, f"constant {item['name']}: value must be an integer")
        constant = Constant(str(item["name"]), item["value"], _text(item.get("doc")), family, path)
        self._add_constant(constant, group)
        return constant.name

    def _add_constant(self, constant: Constant, group: str | None) -> None:
        if constant.name in self.constants:
            raise SpecError(constant.path, f"constant {constant.name} is defined twice; refer to it by name")
        self.constants[constant.name] = constant
        if group:
            self.families[constant.family]["names"][group].append(constant.name)

    def _enum(self, family: str, path: str, item: Mapping[str, Any]) -> None:
        _check_keys(item, {"name", "doc", "members"}, ("name", "members"), "enum", path)
        members = []
        for member in item["members"] or ():
            _check_keys(member, {"name", "value", "doc"}, ("name", "value"), f"enum {item['name']}", path)
            members.append(self._constant(family, path, member, None))
        self._add_named(
            self.enums, "enums", EnumDef(item["name"], _text(item.get("doc")), tuple(members), family, path)
        )

    def _add_named(self, table: dict[str, Any], group: str, value: Any) -> None:
        if value.name in table:
            raise SpecError(value.path, f"{value.name} is defined twice")
        table[value.name] = value
        self.families[value.family]["names"][group].append(value.name)

    # flag sets ----------------------------------------------------------------

    def resolve_flags(self, documents: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for path, data in documents:
            for item in data.get("flags") or ():
                self._flagset(str(data["family"]), path, item)

    def _flagset(self, family: str, path: str, item: Mapping[str, Any]) -> None:
        members = tuple(self._member_name(path, member) for member in item["members"] or ())
        mask = self._mask(path, item, members)
        self._add_named(
            self.flagsets,
            "flagsets",
            FlagSetDef(item["name"], _text(item.get("doc")), members, mask, family, path),
        )

    def _member_name(self, path: str, member: Any) -> str:
        name = str(member["name"]) if isinstance(member, Mapping) else str(member)
        if name not in self.constants:
            raise SpecError(path, f"flag member {name} is not defined anywhere")
        return name

    def _mask(self, path: str, item: Mapping[str, Any], members: tuple[str, ...]) -> int | None:
        mask = item.get("mask")
        if mask is None or (isinstance(mask, int) and not isinstance(mask, bool)):
            return mask
        if mask == "all":
            combined = 0
            for name in members:
                combined |= self.constants[name].value
            return combined
        if mask in self.constants:
            return self.constants[mask].value
        raise SpecError(path, f"flag set {item['name']}: mask {mask!r} is not all, a number or a constant")

    # structs ------------------------------------------------------------------

    def define_structs(self, documents: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Structs and packets, in file order: a struct-typed field names one defined before it."""
        for path, data in documents:
            family = str(data["family"])
            for item in data.get("structs") or ():
                self._struct(family, path, item)
            for item in data.get("packets") or ():
                self._packet(family, path, data, item)

    def _struct(self, family: str, path: str, item: Mapping[str, Any]) -> None:
        _check_keys(item, {"name", "doc", "kernel-abi", "fields"}, ("name", "fields"), "struct", path)
        waive, why = self._waivers(path, item)
        inputs = [self._field_input(path, item["name"], raw, family) for raw in item["fields"] or ()]
        fields, size, align = lay_out(inputs)
        struct = Struct(item["name"], _text(item.get("doc")), family, path, fields, size, waive, why, align=align)
        self._add_named(self.structs, "structs", struct)

    def _packet(self, family: str, path: str, data: Mapping[str, Any], item: Mapping[str, Any]) -> None:
        """``struct PREFIX_pkt_NAME``: the header, then the packet's fields."""
        prefix = str(data["prefix"])
        name = str(item["name"])
        header_name = f"{prefix.lower()}_pkt_header"
        if f"{prefix}_PKT_ALIGN" not in self.constants:
            raise SpecError(path, f"packet {name}: the ISA needs the constant {prefix}_PKT_ALIGN")
        header = self.structs.get(header_name)
        if header is None or header.family != family:
            raise SpecError(path, f"packet {name}: the ISA needs its header struct {header_name} before its packets")
        if {"opcode", "dwords"} - {field.name for field in header.fields}:
            raise SpecError(path, f"struct {header_name}: a packet header needs opcode and dwords fields")
        engine = item.get("engine")
        engine_enum = self.enums.get(f"{prefix.lower()}_engine")
        if engine is not None and (engine_enum is None or engine not in engine_enum.members):
            raise SpecError(path, f"packet {name}: engine {engine} is not a member of enum {prefix.lower()}_engine")
        variable = item.get("variable-length", False)
        if not isinstance(variable, bool):
            raise SpecError(path, f"packet {name}: variable-length must be true or false")
        if any(isinstance(raw, Mapping) and raw.get("name") == "header" for raw in item["fields"] or ()):
            raise SpecError(path, f"packet {name}: header is the generated first field; name the field otherwise")
        struct_name = _packet_struct_name(prefix, name)
        opcode_name = f"{prefix}_OP_{name}"
        raw_header = {"name": "header", "type": header_name, "doc": "header"}
        inputs = [self._field_input(path, struct_name, raw_header, family)]
        inputs += [self._field_input(path, struct_name, raw, family) for raw in item["fields"] or ()]
        fields, size, align = lay_out(inputs)
        header_doc = f"Opcode {opcode_name}, dwords {size // 4}{' or more' if variable else ''}, flags 0."
        fields = (replace(fields[0], doc=header_doc), *fields[1:])
        doc = _text(item.get("doc"))
        struct = Struct(struct_name, doc, family, path, fields, size, align=align, packet=name)
        self._add_named(self.structs, "structs", struct)
        opcode = self.constants[opcode_name].value
        packet = Packet(name, opcode, opcode_name, engine, doc, struct_name, variable, family, path)
        self._add_named(self.packets, "packets", packet)

    def check_packets(self) -> None:
        """Opcodes are what a decoder dispatches on: one packet each, and they fit the header."""
        by_opcode: dict[int, list[Packet]] = {}
        for packet in self.packets.values():
            by_opcode.setdefault(packet.opcode, []).append(packet)
            header = self.structs[self.structs[packet.struct].fields[0].type]
            widths = {field.name: field.size for field in header.fields}
            if packet.opcode >= 1 << (8 * widths["opcode"]):
                raise SpecError(packet.path, f"packet {packet.name}: opcode {packet.opcode:#x} does not fit the header")
            if self.structs[packet.struct].size // 4 >= 1 << (8 * widths["dwords"]):
                raise SpecError(packet.path, f"packet {packet.name}: too long for the header's dwords field")
        for opcode, packets in by_opcode.items():
            if len(packets) > 1:
                names = ", ".join(packet.name for packet in packets)
                raise SpecError(packets[0].path, f"opcode {opcode:#x} used by {names}", "unique-opcode")

    def _waivers(self, path: str, item: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        abi = item.get("kernel-abi")
        if abi is None:
            return (), ""
        _check_keys(abi, {"waive", "why"}, ("waive",), f"struct {item['name']} kernel-abi", path)
        return tuple(str(rule) for rule in abi["waive"] or ()), _text(abi.get("why"))

    def _field_input(self, path: str, struct: str, raw: Mapping[str, Any], family: str) -> dict[str, Any]:
        where = f"struct {struct} field {raw.get('name', '?')}"
        _check_keys(raw, _FIELD_KEYS, ("name", "type"), where, path)
        if self.families[family]["kind"] == "isa":
            ioctl_only = [key for key in _IOCTL_ONLY_FIELD_KEYS if key in raw]
            if ioctl_only:
                raise SpecError(path, f"{where}: {', '.join(ioctl_only)}: no meaning in a command stream")
        base, count = parse_type(str(raw["type"]), path, where, self.structs)
        direction = raw.get("dir", "in")
        if direction not in FIELD_DIRECTIONS:
            raise SpecError(path, f"{where}: dir must be one of {', '.join(FIELD_DIRECTIONS)}")
        for key, table in (("flags", self.flagsets), ("enum", self.enums)):
            if raw.get(key) is not None and raw[key] not in table:
                raise SpecError(path, f"{where}: {key} {raw[key]} is not defined")
        nested = self.structs.get(base)
        if nested is not None:
            if any(raw.get(key) is not None for key in ("flags", "enum", "points-to", "handle", "fd")):
                raise SpecError(path, f"{where}: a struct-typed field takes no flags, enum, points-to, handle or fd")
            elem_size, align = nested.size, nested.align
        else:
            elem_size = align = SCALAR_SIZES[base]
        return {
            "raw": raw,
            "base": base,
            "count": count,
            "direction": direction,
            "elem_size": elem_size,
            "align": align,
            "struct": nested.name if nested is not None else None,
            "kind": _field_kind(path, where, raw, direction),
        }

    # ioctls -------------------------------------------------------------------

    def define_ioctls(self, documents: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for path, data in documents:
            for item in data.get("ioctls") or ():
                self._ioctl(str(data["family"]), path, item)

    def _ioctl(self, family: str, path: str, item: Mapping[str, Any]) -> None:
        where = f"ioctl {item.get('name', '?')}"
        _check_keys(item, _IOCTL_KEYS, ("name", "dir"), where, path)
        if item["dir"] not in DIRECTIONS:
            raise SpecError(path, f"{where}: dir must be one of {', '.join(DIRECTIONS)}")
        struct = self._ioctl_struct(family, path, item, where)
        overrides = _overrides(path, where, item.get("fields"), struct)
        variants = tuple(self._variant(path, where, raw) for raw in item.get("variants") or ())
        sizes = tuple(sorted(set(struct.sizes) | {variant.size for variant in variants}))
        nr, index = self._ioctl_nr(path, item, where)
        ioctl = Ioctl(
            name=str(item["name"]),
            family=family,
            path=path,
            type=self.families[family]["type"],
            nr=nr,
            index=index,
            dir_name=item["dir"],
            struct=struct.name,
            size=struct.size,
            sizes=sizes,
            permissions=tuple(sorted(map(str, item.get("permissions") or ()))),
            requires=tuple(sorted(map(str, item.get("requires") or ()))),
            errors=tuple(self._error(path, where, raw) for raw in item.get("errors") or ()),
            doc=_text(item.get("doc")),
            variants=variants,
            by_value=bool(item.get("by-value", False)),
            overrides=overrides,
        )
        self._add_named(self.ioctls, "ioctls", ioctl)

    def _ioctl_struct(self, family: str, path: str, item: Mapping[str, Any], where: str) -> Struct:
        if ("struct" in item) == ("scalar" in item):
            raise SpecError(path, f"{where}: give exactly one of struct or scalar")
        if "struct" in item:
            if item["struct"] not in self.structs:
                raise SpecError(path, f"{where}: struct {item['struct']} is not defined")
            return self.structs[item["struct"]]
        scalar = item["scalar"]
        _check_keys(
            scalar, {"struct", "field", "type", "doc", "points-to"}, ("struct", "field", "type"), where, path
        )
        raw = {"name": scalar["field"], "type": scalar["type"], "doc": scalar.get("doc")}
        if "points-to" in scalar:
            raw["points-to"] = scalar["points-to"]
        fields, size, align = lay_out([self._field_input(path, scalar["struct"], raw, family)])
        doc = f"Argument of {item['name']}, a bare {scalar['type']} given a struct so every ioctl has one."
        struct = Struct(scalar["struct"], doc, family, path, fields, size, scalar_of=str(item["name"]), align=align)
        self._add_named(self.structs, "structs", struct)
        return struct

    def _ioctl_nr(self, path: str, item: Mapping[str, Any], where: str) -> tuple[int, int | None]:
        if ("nr" in item) == ("index" in item):
            raise SpecError(path, f"{where}: give exactly one of nr or index")
        if "nr" in item:
            return int(item["nr"]), None
        base = self.constants.get("DRM_COMMAND_BASE")
        if base is None:
            raise SpecError(path, f"{where}: index needs the DRM_COMMAND_BASE constant")
        return base.value + int(item["index"]), int(item["index"])

    @staticmethod
    def _variant(path: str, where: str, raw: Mapping[str, Any]) -> Variant:
        _check_keys(raw, {"name", "size", "doc"}, ("name", "size"), f"{where} variant", path)
        return Variant(str(raw["name"]), int(raw["size"]), _text(raw.get("doc")))

    @staticmethod
    def _error(path: str, where: str, raw: Mapping[str, Any]) -> tuple[str, str]:
        _check_keys(raw, {"errno", "when"}, ("errno", "when"), f"{where} error", path)
        return str(raw["errno"]), _text(raw["when"])

    # C helpers ----------------------------------------------------------------

    def define_helpers(self, documents: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for path, data in documents:
            for item in data.get("c-helpers") or ():
                self._helper(str(data["family"]), path, item)

    def _helper(self, family: str, path: str, item: Mapping[str, Any]) -> None:
        _check_keys(item, {"name", "doc", "code"}, ("name", "code"), "C helper", path)
        name = str(item["name"])
        if self.families[family]["data"]["origin"] != "driver":
            raise SpecError(path, f"C helper {name}: only the driver's own header carries C helpers")
        code = item["code"]
        if not isinstance(code, str) or not _defines_static_inline(code, name):
            # A header function that is not static inline is defined again in every file including it.
            raise SpecError(path, f"C helper {name}: code must be the static inline definition of {name}()")
        helper = CHelper(name, _lines(item.get("doc")), code.strip(), family, path)
        self._add_named(self.helpers, "helpers", helper)

    # result -------------------------------------------------------------------

    def model(self) -> Model:
        families = {name: self._family(name, info) for name, info in self.families.items()}
        return Model(
            families,
            self.constants,
            self.enums,
            self.flagsets,
            self.structs,
            self.ioctls,
            self.helpers,
            self.packets,
        )

    @staticmethod
    def _family(name: str, info: Mapping[str, Any]) -> Family:
        data, names = info["data"], info["names"]
        version = data.get("version")
        isa = info["kind"] == "isa"
        return Family(
            name=name,
            path=info["path"],
            kind=info["kind"],
            type=info["type"],
            # An ISA's doc is the introduction to a reference: its paragraphs stay.
            doc=_paragraphs(data.get("doc")) if isa else _text(data.get("doc")),
            origin=data["origin"],
            dispatch=None if isa else data["dispatch"],
            unknown_errno=None if isa else str(data["unknown-errno"]),
            errors=tuple(_Builder._error(info["path"], f"family {name}", raw) for raw in data.get("errors") or ()),
            version=(int(version["major"]), int(version["minor"])) if version else None,
            driver=data.get("driver"),
            constants=tuple(names["constants"]),
            enums=tuple(names["enums"]),
            flagsets=tuple(names["flagsets"]),
            structs=tuple(names["structs"]),
            ioctls=tuple(names["ioctls"]),
            helpers=tuple(names["helpers"]),
            packets=tuple(names["packets"]),
            prefix=data.get("prefix"),
        )


def _field_kind(path: str, where: str, raw: Mapping[str, Any], direction: str) -> dict[str, Any]:
    """A field's ``handle``, ``new`` and ``fd``, checked: what its integer refers to."""
    handle, new = raw.get("handle"), raw.get("new", False)
    if handle is not None and handle not in HANDLE_KINDS:
        raise SpecError(path, f"{where}: handle {handle!r} is not one of {', '.join(HANDLE_KINDS)}")
    if not isinstance(new, bool):
        raise SpecError(path, f"{where}: new must be true or false")
    if new and (handle is None or direction != "in"):
        raise SpecError(path, f"{where}: new marks a handle number the caller picks; it needs handle and dir in")
    fd = _fd_kinds(path, where, raw.get("fd"))
    if handle is not None and fd:
        raise SpecError(path, f"{where}: give handle or fd, not both")
    if fd and direction == "out":
        raise SpecError(path, f"{where}: fd describes an input; an fd the device returns takes none")
    return {"handle": handle, "new": new, "fd": fd}


def _fd_kinds(path: str, where: str, value: Any) -> tuple[str, ...]:
    """``fd: KIND`` or ``fd: [KIND, ...]`` as a tuple of distinct known kinds."""
    if value is None:
        return ()
    kinds = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
    if not kinds or len(set(kinds)) != len(kinds) or any(kind not in FD_KINDS for kind in kinds):
        raise SpecError(path, f"{where}: fd {value!r} is not one or a list of {', '.join(FD_KINDS)}")
    return kinds


def _overrides(path: str, where: str, raw: Any, struct: Struct) -> tuple[Field, ...]:
    """An ioctl's ``fields``: the named fields of its struct as this ioctl uses them."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"{where}: fields: expected a mapping from field names to {{dir, handle, fd}}")
    fields = {field.name: field for field in struct.fields}
    overrides = []
    for name, override in raw.items():
        field_where = f"{where} field {name}"
        _check_keys(override, _OVERRIDE_KEYS, (), field_where, path)
        if name not in fields:
            raise SpecError(path, f"{field_where}: struct {struct.name} has no field {name}")
        overrides.append(_overridden(path, field_where, fields[name], override))
    return tuple(overrides)


def _overridden(path: str, where: str, field: Field, override: Mapping[str, Any]) -> Field:
    """``field`` with an ioctl's override applied; its ``dir`` may only narrow ``inout``."""
    direction = override.get("dir", field.direction)
    if direction not in FIELD_DIRECTIONS:
        raise SpecError(path, f"{where}: dir must be one of {', '.join(FIELD_DIRECTIONS)}")
    if direction != field.direction and field.direction != "inout":
        raise SpecError(path, f"{where}: dir {direction} contradicts the struct's {field.direction}; "
                        "an override only narrows inout")
    if field.struct is not None and ("handle" in override or "fd" in override):
        raise SpecError(path, f"{where}: a struct-typed field takes no handle or fd")
    merged = {"handle": field.handle, "new": field.new, "fd": list(field.fd) or None}
    merged.update({key: override[key] for key in ("handle", "fd") if key in override})
    return replace(field, direction=direction, **_field_kind(path, where, merged, direction))


def _names() -> dict[str, list[str]]:
    groups = ("constants", "enums", "flagsets", "structs", "ioctls", "helpers", "packets")
    return {group: [] for group in groups}


def _packet_struct_name(prefix: str, packet: str) -> str:
    return f"{prefix.lower()}_pkt_{packet.lower()}"


def _paragraphs(value: Any) -> str:
    """Paragraphs (blank-line separated in the text) joined by one blank line, each on one line."""
    if value is None:
        return ""
    return "\n\n".join(filter(None, (_text(part) for part in re.split(r"\n\s*\n", str(value)))))


def _defines_static_inline(code: str, name: str) -> bool:
    return re.match(r"static\s+inline\b[^;{]*\b" + re.escape(name) + r"\s*\(", code.strip()) is not None


def _make_field(inputs: Mapping[str, Any], offset: int, size: int) -> Field:
    raw = inputs["raw"]
    kernel_implicit = bool(raw.get("kernel-implicit", False))
    return Field(
        name=str(raw["name"]),
        type=str(raw["type"]),
        base=inputs["base"],
        count=inputs["count"],
        offset=offset,
        size=size,
        doc=_text(raw.get("doc")),
        direction=inputs["direction"],
        flags=raw.get("flags"),
        enum=raw.get("enum"),
        points_to=raw.get("points-to"),
        since=raw.get("since"),
        kernel_c_type=raw.get("kernel-c-type"),
        kernel_implicit=kernel_implicit,
        align=inputs["align"],
        struct=inputs.get("struct"),
        **inputs["kind"],
    )


def parse_type(
    spelling: str, path: str, where: str, structs: Mapping[str, Any] | None = None
) -> tuple[str, int | None]:
    """Split ``u32`` / ``char[32]`` / ``drm_emudev_tensor`` into base type and element count.

    Only fixed-size __u/__s types exist in a uapi: C's bool, enum, long and
    pointer types change size or signedness between ABIs. ``f32`` parses
    (the command-stream ISA has it); the linter keeps it out of ioctl structs.
    A struct name is a nested struct, one of ``structs`` (those defined so far).
    """
    match = _TYPE_RE.match(spelling.replace(" ", ""))
    if not match or (match["base"] not in SCALAR_SIZES and match["base"] not in (structs or {})):
        raise SpecError(
            path,
            f"{where}: {spelling!r} is not a uapi type (u8..u64, s8..s64, f32, ptr, a struct defined before, X[N])",
            "c-types",
        )
    count = int(match["count"]) if match["count"] else None
    if match["base"] == "char" and count is None:
        raise SpecError(path, f"{where}: char is only allowed as a char[N] string buffer", "c-types")
    return match["base"], count


def lay_out(inputs: Sequence[Mapping[str, Any]]) -> tuple[tuple[Field, ...], int, int]:
    """Fields at their C natural-alignment offsets (LP64), the padded struct size and its alignment."""
    offset, align, fields = 0, 1, []
    for field_input in inputs:
        member_align = field_input["align"]
        offset = -(-offset // member_align) * member_align
        size = field_input["elem_size"] * (field_input["count"] or 1)
        fields.append(_make_field(field_input, offset, size))
        offset += size
        align = max(align, member_align)
    return tuple(fields), -(-offset // align) * align, align


# --------------------------------------------------------------------------- shared rendering helpers


def fmt_int(value: int) -> str:
    """Render an integer in the base the spec used."""
    return f"{value:#x}" if isinstance(value, HexInt) else str(value)


def fmt_cmd(cmd: int) -> str:
    return f"0x{cmd:08X}"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


# --------------------------------------------------------------------------- Python bindings

_CTYPES = {
    "u8": "ctypes.c_uint8",
    "s8": "ctypes.c_int8",
    "char": "ctypes.c_char",
    "u16": "ctypes.c_uint16",
    "s16": "ctypes.c_int16",
    "u32": "ctypes.c_uint32",
    "s32": "ctypes.c_int32",
    "f32": "ctypes.c_float",
    "u64": "ctypes.c_uint64",
    "s64": "ctypes.c_int64",
    "ptr": "ctypes.c_uint64",
}


def py_str(text: str, indent: int, lead: int = 0, width: int = 108) -> str:
    """A Python literal for ``text`` starting ``lead`` columns after ``indent``.

    Too long for one line, it becomes implicitly joined chunks in parentheses,
    so that generated code keeps to the project's line length.
    """
    literal = json.dumps(text)
    if indent + lead + len(literal) <= width:
        return literal
    chunks, current = [], ""
    for word in re.findall(r"\S+\s*", text):
        if current and indent + 4 + len(json.dumps(current + word)) > width:
            chunks.append(current)
            current = ""
        current += word
    chunks.append(current)
    pad = " " * (indent + 4)
    return "(\n" + "\n".join(pad + json.dumps(chunk) for chunk in chunks) + "\n" + " " * indent + ")"


def _py_comment(text: str, indent: int = 0) -> list[str]:
    pad = " " * indent
    return [f"{pad}#: {line}".rstrip() for line in _wrap(text, 100 - indent)]


def _py_dir(direction: int) -> str:
    names = [name for bit, name in ((IOC_READ, "IOC_READ"), (IOC_WRITE, "IOC_WRITE")) if direction & bit]
    return " | ".join(names) if names else "IOC_NONE"


def render_defs(model: Model) -> str:
    """The generated ``emudev/uapi/defs.py``."""
    body = [
        *_py_families(model),
        *_py_constants(model),
        *_py_flagsets(model),
        *_py_enums(model),
        *_py_structs(model),
        *_py_ioctls(model),
        *_py_packets(model),
        *_py_driver(model),
    ]
    used = {name for ioctl in model.ioctls.values() for name in _py_dir(ioctl.dir).split(" | ")}
    imports = [
        *sorted(used),
        "EnumSpec",
        "FamilySpec",
        "FieldSpec",
        "FlagSet",
        "IoctlSpec",
        "PacketSpec",
        "UapiStruct",
    ]
    head = [
        f"# Generated by `{GENERATOR}` from emudev/uapi/spec/*.yaml. Do not edit.",
        '"""Python bindings of the uapi declared in ``emudev/uapi/spec/*.yaml``.',
        "",
        "Struct layouts, request numbers and flag values all come from the spec; edit the",
        f"YAML and run ``{GENERATOR}``.",
        '"""',
        "",
        "import ctypes",
        "",
        "from emudev.uapi.types import (",
        *[f"    {name}," for name in imports],
        ")",
    ]
    return "\n".join(head + body) + "\n"


def _py_families(model: Model) -> list[str]:
    lines = ["", "FAMILIES: dict[str, FamilySpec] = {"]
    for family in model.families.values():
        if family.kind != "ioctl":
            continue
        lines += [
            f'    "{family.name}": FamilySpec(',
            f'        name="{family.name}",',
            f"        type={family.type:#x},",
            f"        doc={py_str(family.doc, 8, 5)},",
            f'        dispatch="{family.dispatch}",',
            f'        unknown_errno="{family.unknown_errno}",',
            "        errors=(",
            *[f'            ("{code}", {py_str(when, 16, 0)}),' for code, when in family.errors],
            "        ),",
            f'        origin="{family.origin}",',
            "    ),",
        ]
    return [*lines, "}"]


def _py_constants(model: Model) -> list[str]:
    lines: list[str] = []
    for family in model.families.values():
        lines += ["", "", f"# {family.name} " + "-" * (97 - len(family.name))]
        for name in _family_value_names(model, family):
            constant = model.constants[name]
            lines += ["", *_py_comment(constant.doc), f"{name} = {fmt_int(constant.value)}"]
        for ioctl in (model.ioctls[name] for name in family.ioctls):
            lines += ["", *_py_comment(ioctl.doc), f"{ioctl.name} = {fmt_cmd(ioctl.cmd)}"]
            for variant in ioctl.variants:
                lines += [
                    *_py_comment(variant.doc),
                    f"{variant.name} = {fmt_cmd(ioctl.variant_cmd(variant))}",
                ]
    return lines


def _family_value_names(model: Model, family: Family) -> list[str]:
    """Constants a family defines, in spec order, each once even if several flag sets share it."""
    names = list(family.constants)
    for enum in family.enums:
        names += model.enums[enum].members
    for flagset in family.flagsets:
        names += model.flagsets[flagset].members
    return [name for name in dict.fromkeys(names) if model.constants[name].family == family.name]


def _py_flagsets(model: Model) -> list[str]:
    lines = ["", "", "FLAGSETS: dict[str, FlagSet] = {"]
    for flagset in model.flagsets.values():
        if flagset.mask is None:
            raise SpecError(flagset.path, f"flag set {flagset.name} has no mask", "flags-mask")
        lines += [
            f'    "{flagset.name}": FlagSet(',
            f'        name="{flagset.name}",',
            *_py_members(flagset.members),
            f"        mask={flagset.mask:#x},",
            f"        doc={py_str(flagset.doc, 8, 5)},",
            "    ),",
        ]
    return [*lines, "}"]


def _py_members(names: Sequence[str]) -> list[str]:
    """``members={...},`` for a FlagSet or EnumSpec, one entry per line when needed."""
    entries = [f'"{name}": {name}' for name in names]
    line = f"        members={{{', '.join(entries)}}},"
    if len(line) <= 110:
        return [line]
    lines = ["        members={"]
    for name, entry in zip(names, entries, strict=True):
        fits = len(entry) + 13 <= 110
        lines += (
            [f"            {entry},"]
            if fits
            else [f'            "{name}": (', f"                {name}", "            ),"]
        )
    return [*lines, "        },"]


def _py_enums(model: Model) -> list[str]:
    lines = ["", "", "ENUMS: dict[str, EnumSpec] = {"]
    for enum in model.enums.values():
        lines += [
            f'    "{enum.name}": EnumSpec(',
            f'        name="{enum.name}",',
            *_py_members(enum.members),
            f"        doc={py_str(enum.doc, 8, 5)},",
            "    ),",
        ]
    return [*lines, "}"]


def _py_structs(model: Model) -> list[str]:
    lines: list[str] = []
    for struct in model.structs.values():
        lines += [
            "",
            "",
            f"class {struct.name}(UapiStruct):",
            f"    _doc_ = {py_str(struct.doc, 4, len('_doc_ = '))}",
            "    _fields_ = [",
        ]
        lines += [f'        ("{field.name}", {_ctype(field)}),' for field in struct.fields]
        lines += ["    ]", "    _specs_ = ("]
        for field in struct.fields:
            lines += _py_fieldspec(field)
        lines += ["    )", "", "", f"assert ctypes.sizeof({struct.name}) == {struct.size}"]
    return lines


def _ctype(field: Field) -> str:
    base = field.struct or _CTYPES[field.base]
    return base + (f" * {field.count}" if field.count else "")


def _py_fieldspec(field: Field) -> list[str]:
    """``FieldSpec(name, type, offset, size, doc, flags, enum, is_pointer, direction)``, compactly."""
    head = f'"{field.name}", "{field.type}", {field.offset}, {field.size}'
    tail = f'{_py_opt(field.flags)}, {_py_opt(field.enum)}, {field.is_pointer}, "{field.direction}"'
    line = f"        FieldSpec({head}, {json.dumps(field.doc)}, {tail}),"
    if len(line) <= 110:
        return [line]
    return [
        "        FieldSpec(",
        f"            {head},",
        f"            {py_str(field.doc, 12, 1)},",
        f"            {tail},",
        "        ),",
    ]


def _py_opt(value: str | None) -> str:
    return "None" if value is None else json.dumps(value)


def _py_ioctls(model: Model) -> list[str]:
    lines = ["", "", "IOCTLS: tuple[IoctlSpec, ...] = ("]
    for ioctl in model.ioctls.values():
        lines += _py_ioctl(ioctl)
    return [
        *lines,
        ")",
        "IOCTLS_BY_NAME: dict[str, IoctlSpec] = {spec.name: spec for spec in IOCTLS}",
    ]


def _py_ioctl(ioctl: Ioctl) -> list[str]:
    lines = [
        "    IoctlSpec(",
        f'        name="{ioctl.name}",',
        f'        family="{ioctl.family}",',
        f"        type={ioctl.type:#x},",
        f"        nr={ioctl.nr:#04x},",
        f"        dir={_py_dir(ioctl.dir)},",
        f"        struct={ioctl.struct},",
        f"        size={ioctl.size},",
        f"        sizes={_py_tuple([str(size) for size in ioctl.sizes])},",
        f"        cmd={ioctl.name},",
        f"        permissions={_py_frozenset(ioctl.permissions)},",
        "        errors=(",
    ]
    for errno_name, when in ioctl.errors:
        lines.append(f'            ("{errno_name}", {py_str(when, 12, len(errno_name) + 5)}),')
    variants = _py_tuple([f'("{variant.name}", {variant.size})' for variant in ioctl.variants])
    return [
        *lines,
        "        ),",
        f"        doc={py_str(ioctl.doc, 8, 5)},",
        f"        requires={_py_frozenset(ioctl.requires)},",
        f"        variants={variants},",
        f"        by_value={ioctl.by_value},",
        "    ),",
    ]


def _py_packets(model: Model) -> list[str]:
    lines = [
        "",
        "",
        "#: The command-stream packets by opcode: what a decoder dispatches on.",
        "PACKETS: dict[int, PacketSpec] = {",
    ]
    for packet in model.packets.values():
        struct = model.structs[packet.struct]
        engine = packet.engine or "None"
        lines += [
            f"    {packet.opcode_name}: PacketSpec(",
            f'        name="{packet.name}",',
            f"        opcode={packet.opcode_name},",
            f"        engine={engine},",
            f"        struct={struct.name},",
            f"        size={struct.size},",
            f"        dwords={struct.size // 4},",
            f"        doc={py_str(packet.doc, 8, 5)},",
            f"        variable_length={packet.variable_length},",
            "    ),",
        ]
    return [
        *lines,
        "}",
        "PACKETS_BY_NAME: dict[str, PacketSpec] = {spec.name: spec for spec in PACKETS.values()}",
    ]


def _py_tuple(items: Sequence[str]) -> str:
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _py_frozenset(names: Sequence[str]) -> str:
    return "frozenset({" + ", ".join(f'"{name}"' for name in names) + "})" if names else "frozenset()"


def _py_driver(model: Model) -> list[str]:
    family = model.driver_family()
    driver, (major, minor) = family.driver or {}, family.version or (0, 0)
    entries = {
        "name": driver["name"],
        "desc": driver["desc"],
        "date": driver["date"],
        "major": major,
        "minor": minor,
        "patchlevel": driver.get("patchlevel", 0),
    }
    lines = [
        "",
        "",
        "#: The strings and version DRM_IOCTL_VERSION reports.",
        "DRIVER: dict[str, str | int] = {",
    ]
    lines += [f'    "{key}": {json.dumps(value)},' for key, value in entries.items()]
    return [*lines, "}"]


# --------------------------------------------------------------------------- C header

_C_TYPES = {
    "u8": "__u8",
    "s8": "__s8",
    "char": "char",
    "u16": "__u16",
    "s16": "__s16",
    "u32": "__u32",
    "s32": "__s32",
    "f32": "float",
    "u64": "__u64",
    "s64": "__s64",
    "ptr": "__u64",
}
_C_DIRS = {"io": "DRM_IO", "ior": "DRM_IOR", "iow": "DRM_IOW", "iowr": "DRM_IOWR"}
_C_HELPERS_MACRO = "DRM_EMUDEV_HAVE_C_HELPERS"
# What a C helper may use besides drm.h and this header: POSIX.1-2008 file and ioctl calls, C99 libc.
_C_HELPER_INCLUDES = ("errno.h", "fcntl.h", "limits.h", "stdint.h", "stdio.h", "string.h", "sys/ioctl.h")
_C_HELPERS_AVAILABILITY = (
    "The C helpers are user-space POSIX.1-2008 code (readlink(), O_CLOEXEC) and C99 static inline "
    "functions. Which POSIX names the C library declares is chosen by feature macros that a translation "
    "unit defines before its first #include; a header cannot define them, since headers read before it "
    "were already configured without them. So the header includes <unistd.h>, which makes the C library "
    "settle its feature macros, and offers the helpers only when those select POSIX.1-2008: in a GNU "
    "dialect (the compilers' default, and C++), or under strict -std=c99/c11 with -D_GNU_SOURCE, "
    "-D_DEFAULT_SOURCE, -D_POSIX_C_SOURCE=200809L or -D_XOPEN_SOURCE=700. "
    f"{_C_HELPERS_MACRO} is defined when they are there."
)


def _c_define(name: str, value: str) -> str:
    tabs = max(1, -(-(48 - len(f"#define {name}")) // 8))
    return f"#define {name}" + "\t" * tabs + value


def _c_doc(text: str, indent: str = "") -> list[str]:
    """A kernel-doc comment block holding ``text``, each of its lines wrapped on its own."""
    wrapped = [part for line in text.split("\n") for part in _wrap(line, 76)]
    return [f"{indent}/**", *[f"{indent} * {line}".rstrip() for line in wrapped], f"{indent} */"]


def render_header(model: Model) -> str:
    """The generated ``include/uapi/drm/emudev_accel.h``: this driver's uapi only."""
    family = model.driver_family()
    isas = model.driver_isas()
    sources = " and ".join(item.path for item in [family, *isas])
    guard = "__DRM_UAPI_EMUDEV_ACCEL_H__"
    isa_sections = []
    for isa in isas:
        isa_sections += [*_c_isa_intro(isa), *_c_values(model, isa), *_c_structs(model, isa)]
    lines = [
        "/* SPDX-License-Identifier: MIT */",
        "/*",
        *[f" * {line}".rstrip() for line in _wrap(family.doc, 76)],
        " *",
        *[f" * {line}".rstrip() for line in _wrap(f"Generated by `{GENERATOR}` from {sources}. Do not edit.", 76)],
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        '#include "drm.h"',
        "",
        "#if defined(__KERNEL__)",
        "#include <linux/stddef.h>",
        "#else",
        "#include <stddef.h>",
        "#endif",
        *_c_helper_includes(family),
        "",
        "#if defined(__cplusplus)",
        'extern "C" {',
        "#endif",
        *_c_ioctl_numbers(model, family),
        *_c_values(model, family),
        *_c_structs(model, family),
        *isa_sections,
        *_c_layout_checks(model, [family, *isas]),
        *_c_helpers(model, family),
        "",
        "#if defined(__cplusplus)",
        "}",
        "#endif",
        "",
        f"#endif /* {guard} */",
    ]
    return "\n".join(lines) + "\n"


def _c_helper_includes(family: Family) -> list[str]:
    """Outside the extern "C" block: the C library headers, and the macro saying the helpers compile."""
    if not family.helpers:
        return []
    return [
        "",
        "/*",
        *[f" * {line}".rstrip() for line in _wrap(_C_HELPERS_AVAILABILITY, 76)],
        " */",
        "#if !defined(__KERNEL__) && (defined(__cplusplus) || \\",
        "\t(defined(__STDC_VERSION__) && __STDC_VERSION__ >= 199901L))",
        "#include <unistd.h>",
        "#if defined(_GNU_SOURCE) || defined(_DEFAULT_SOURCE) || \\",
        "\t(defined(_POSIX_C_SOURCE) && _POSIX_C_SOURCE >= 200809L) || \\",
        "\t(defined(_XOPEN_SOURCE) && _XOPEN_SOURCE >= 700)",
        f"#define {_C_HELPERS_MACRO} 1",
        *[f"#include <{name}>" for name in _C_HELPER_INCLUDES],
        "#endif",
        "#endif",
    ]


def _c_helpers(model: Model, family: Family) -> list[str]:
    """Last in the header, so that a helper may use any name the uapi defines."""
    if not family.helpers:
        return []
    lines = ["", f"#if defined({_C_HELPERS_MACRO})"]
    for helper in (model.helpers[name] for name in family.helpers):
        lines += ["", *_c_doc(f"{helper.name}() - {helper.doc}"), *helper.code.split("\n")]
    return [*lines, "", f"#endif /* {_C_HELPERS_MACRO} */"]


def _c_ioctl_numbers(model: Model, family: Family) -> list[str]:
    ioctls = [model.ioctls[name] for name in family.ioctls]
    lines = [""]
    lines += [_c_define(_c_index_macro(ioctl), f"{ioctl.index or 0:#04x}") for ioctl in ioctls]
    lines.append("")
    for ioctl in ioctls:
        number = (
            f"{_C_DIRS[ioctl.dir_name]}(DRM_COMMAND_BASE + {_c_index_macro(ioctl)}, struct {ioctl.struct})"
        )
        lines += [*_c_doc(f"{ioctl.name} - {ioctl.doc}"), _c_define(ioctl.name, number)]
    return lines


def _c_index_macro(ioctl: Ioctl) -> str:
    return ioctl.name.replace("DRM_IOCTL_", "DRM_", 1)


def _c_values(model: Model, family: Family) -> list[str]:
    lines: list[str] = []
    for name in family.constants:
        constant = model.constants[name]
        lines += ["", *_c_doc(f"{name} - {constant.doc}"), _c_define(name, fmt_int(constant.value))]
    groups = [
        *(model.enums[name] for name in family.enums),
        *(model.flagsets[name] for name in family.flagsets),
    ]
    for group in groups:
        lines += [
            "",
            "/*",
            *[f" * {line}".rstrip() for line in _wrap(f"{group.name}: {group.doc}", 76)],
            " */",
        ]
        for member in group.members:
            constant = model.constants[member]
            lines += [*_c_doc(f"{member} - {constant.doc}"), _c_define(member, fmt_int(constant.value))]
    return lines


def _c_isa_intro(isa: Family) -> list[str]:
    """The ISA's own introduction, ahead of its values and structs."""
    major, minor = isa.version or (0, 0)
    title = f"Command-stream ISA {isa.name}, version {major}.{minor}, generated from {isa.path}."
    lines = ["", "/*", *[f" * {line}" for line in _wrap(title, 76)]]
    for paragraph in isa.doc.split("\n\n"):
        lines += [" *", *[f" * {line}".rstrip() for line in _wrap(paragraph, 76)]]
    return [*lines, " */"]


def _c_structs(model: Model, family: Family) -> list[str]:
    lines: list[str] = []
    for struct in (model.structs[name] for name in family.structs):
        doc = struct.doc
        if struct.packet is not None:
            packet = model.packets[struct.packet]
            engine = f", engine {packet.engine}" if packet.engine else ", engine named by its engine field"
            doc = f"The {packet.name} packet (opcode {packet.opcode_name}{engine}). {doc}"
        lines += ["", *_c_doc(f"struct {struct.name} - {doc}"), f"struct {struct.name} {{"]
        for index, field in enumerate(struct.fields):
            lines += ([""] if index else []) + _c_field(field, show_dir=family.kind == "ioctl")
        lines.append("};")
    return lines


def _c_field(field: Field, *, show_dir: bool = True) -> list[str]:
    notes = [f"enum {field.enum}" if field.enum else "", f"flags {field.flags}" if field.flags else ""]
    notes += [f"user pointer to {field.points_to}" if field.points_to else ""]
    notes += [field.direction if show_dir else ""]
    extra = "; ".join(note for note in notes if note)
    doc = field.doc + (f" ({extra})" if extra else "")
    declarator = field.name + (f"[{field.count}]" if field.count else "")
    c_type = f"struct {field.struct}" if field.struct else _C_TYPES[field.base]
    return [*_c_doc(f"@{field.name}: {doc}", "\t"), f"\t{c_type} {declarator};"]


def _c_layout_checks(model: Model, families: Sequence[Family]) -> list[str]:
    macro = "DRM_EMUDEV_STATIC_ASSERT"
    lines = [
        "",
        "/*",
        " * Layout checks: sizes and offsets computed from the spec. _Static_assert",
        " * needs C11; C99 gets a negative-size array typedef, which is just as fatal.",
        " */",
        "#if defined(__cplusplus) && __cplusplus >= 201103L",
        f"#define {macro}(expr, tag) static_assert(expr, #tag)",
        "#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L",
        f"#define {macro}(expr, tag) _Static_assert(expr, #tag)",
        "#elif defined(__GNUC__)",
        f"#define {macro}(expr, tag) \\",
        "\ttypedef char drm_emudev_static_assert_##tag[(expr) ? 1 : -1] __attribute__((unused))",
        "#else",
        f"#define {macro}(expr, tag) \\",
        "\ttypedef char drm_emudev_static_assert_##tag[(expr) ? 1 : -1]",
        "#endif",
    ]
    structs = [model.structs[name] for family in families for name in family.structs]
    if any(field.is_float for struct in structs for field in struct.fields):
        lines.append(f"{macro}(sizeof(float) == 4, float_is_binary32);")
    for struct in structs:
        lines.append(f"{macro}(sizeof(struct {struct.name}) == {struct.size}, {struct.name}_size);")
        for field in struct.fields:
            check = f"offsetof(struct {struct.name}, {field.name}) == {field.offset}"
            lines.append(f"{macro}({check}, {struct.name}_{field.name}_offset);")
    return [*lines, f"#undef {macro}"]


# --------------------------------------------------------------------------- reference documentation

_DISPATCH_DOCS = {"nr": "`_IOC_NR`, any argument size", "cmd": "the whole request number"}
_MD_ESCAPES = str.maketrans({"\\": "\\\\", "*": "\\*", "|": "\\|", "<": "&lt;", ">": "&gt;"})
_PERMISSIONS_DOC = (
    "Permissions are the `drm_ioctl_desc` flags: `render_allow` (allowed on render nodes), `auth` "
    "(needs an authenticated client; on accel nodes only root is), `master`, `root_only` (CAP_SYS_ADMIN). "
    "A violation gives EACCES. *Requires* lists driver features checked before the handler runs; a "
    "missing one gives EOPNOTSUPP."
)
_HANDLE_LABELS = {
    "gem": "GEM handle",
    "syncobj": "syncobj handle",
    "ctx": "context id",
    "seqno": "job seqno",
    "flink": "flink name",
}
_FD_LABELS = {"dma_buf": "dma-buf", "sync_file": "sync_file", "syncobj": "syncobj", "eventfd": "eventfd"}


def md(text: str) -> str:
    """Escape prose for Markdown paragraphs and table cells."""
    return text.translate(_MD_ESCAPES)


def render_docs(model: Model) -> str:
    """The generated ``docs/uapi.md``."""
    lines = [
        "# emudev uapi reference",
        "",
        f"Generated by `{GENERATOR}` from `emudev/uapi/spec/*.yaml`. Do not edit.",
        "",
        "Request numbers are `dir << 30 | size << 16 | type << 8 | nr` (asm-generic, x86-64 and arm64); "
        "sizes and offsets are for LP64. " + _PERMISSIONS_DOC,
        "",
    ]
    lines += [f"- [{family.name}](#family-{family.name})" for family in model.families.values()]
    for family in model.families.values():
        lines += _md_isa(model, family) if family.kind == "isa" else _md_family(model, family)
    return "\n".join(lines).rstrip() + "\n"


def _md_isa(model: Model, family: Family) -> list[str]:
    """An ISA: its introduction, the packet table, each packet, then the structs packets share."""
    major, minor = family.version or (0, 0)
    lines = [
        "",
        f'<a id="family-{family.name}"></a>',
        "",
        f"## Family `{family.name}` (command-stream ISA {major}.{minor}, {family.origin})",
    ]
    for paragraph in family.doc.split("\n\n"):
        lines += ["", md(paragraph)]
    starts = ""
    if family.packets:
        header = model.structs[model.packets[family.packets[0]].struct].fields[0].struct
        starts = f"Every packet starts with [`struct {header}`](#struct-{header}). "
    lines += ["", f"{starts}Sizes and offsets are in bytes. Spec: `{family.path}`."]
    if family.packets:
        lines += ["", "### Packets", "", "| opcode | name | engine | size |", "|---|---|---|---|"]
        for packet in (model.packets[name] for name in family.packets):
            size = model.structs[packet.struct].size
            engine = f"`{packet.engine}`" if packet.engine else "its `engine` field"
            length = f"{size} ({size // 4} dwords)" + (" or more" if packet.variable_length else "")
            link = f"[`{packet.name}`](#packet-{packet.name})"
            lines.append(f"| `{packet.opcode:#04x}` | {link} | {engine} | {length} |")
        for name in family.packets:
            lines += _md_packet(model, name)
    sections: list[tuple[str, Sequence[str], Callable[[Model, str], list[str]]]] = [
        ("Structs", [name for name in family.structs if model.structs[name].packet is None], _md_struct),
        ("Flag sets", family.flagsets, _md_flagset),
        ("Enums", family.enums, _md_enum),
    ]
    for title, names, render in sections:
        if names:
            lines += ["", f"### {title}"]
            for name in names:
                lines += render(model, name)
    return lines + _md_constants(model, family)


def _md_packet(model: Model, name: str) -> list[str]:
    packet = model.packets[name]
    struct = model.structs[packet.struct]
    engine = f"engine `{packet.engine}`" if packet.engine else "engine named by its `engine` field"
    return [
        "",
        f'<a id="packet-{packet.name}"></a>',
        "",
        f"#### `{packet.name}`",
        "",
        f"Opcode `{packet.opcode_name}` = `{packet.opcode:#04x}`, {engine}, `struct {struct.name}` "
        f"({struct.size} bytes{', or longer' if packet.variable_length else ''}).",
        "",
        md(packet.doc),
        "",
        "| offset | type | name | doc |",
        "|---|---|---|---|",
        *[_md_field_row(field, with_dir=False) for field in struct.fields],
    ]


def _md_family(model: Model, family: Family) -> list[str]:
    lines = [
        "",
        f'<a id="family-{family.name}"></a>',
        "",
        f"## Family `{family.name}` (type `'{chr(family.type)}'` = {family.type:#04x}, {family.origin})",
        "",
        md(family.doc),
        "",
        f"Dispatched on {_DISPATCH_DOCS[family.dispatch]}; "
        f"unknown requests fail with {family.unknown_errno}. Spec: `{family.path}`.",
    ]
    if family.errors:
        lines += ["", "Any ioctl of the family may also fail with:", "", "| errno | when |", "|---|---|",
                  *[f"| {code} | {md(when)} |" for code, when in family.errors]]
    if family.driver is not None and family.version is not None:
        driver = family.driver
        lines += [
            "",
            f'Driver `{driver.get("name")}` ("{driver.get("desc")}", date "{driver.get("date")}"), '
            f"uapi version {family.version[0]}.{family.version[1]}.",
        ]
    sections: list[tuple[str, Sequence[str], Callable[[Model, str], list[str]]]] = [
        ("Ioctls", family.ioctls, _md_ioctl),
        ("Structs", family.structs, _md_struct),
        ("Flag sets", family.flagsets, _md_flagset),
        ("Enums", family.enums, _md_enum),
    ]
    for title, names, render in sections:
        if names:
            lines += ["", f"### {title}"]
            for name in names:
                lines += render(model, name)
    return lines + _md_constants(model, family) + _md_helpers(model, family)


def _md_ioctl(model: Model, name: str) -> list[str]:
    ioctl = model.ioctls[name]
    struct = model.structs[ioctl.struct]
    numbers = [f"`{fmt_cmd(ioctl.cmd)}`"] + [
        f"`{variant.name}` = `{fmt_cmd(ioctl.variant_cmd(variant))}`" for variant in ioctl.variants
    ]
    argument = f"[`struct {struct.name}`](#struct-{struct.name})" + (
        " (passed by value)" if ioctl.by_value else ""
    )
    lines = [
        "",
        f"#### `{ioctl.name}`",
        "",
        "| | |",
        "|---|---|",
        f"| Number | {', '.join(numbers)} |",
        f"| nr | {ioctl.nr:#04x}"
        + (f" (DRM_COMMAND_BASE + {ioctl.index:#04x})" if ioctl.index is not None else "")
        + " |",
        f"| Direction | `_{ioctl.dir_name.upper()}` |",
        f"| Argument | {argument} |",
        f"| Accepted sizes | {', '.join(map(str, ioctl.sizes))} |",
        f"| Permissions | {', '.join(ioctl.permissions) or 'none'} |",
        f"| Requires | {', '.join(ioctl.requires) or 'nothing'} |",
    ]
    if ioctl.overrides:
        uses = "; ".join(", ".join(filter(None, (f"`{f.name}` {f.direction}", _md_kind(f)))) for f in ioctl.overrides)
        lines.append(f"| Fields as used here | {uses} |")
    lines += [
        "",
        md(ioctl.doc),
    ]
    if ioctl.errors:
        lines += ["", "| errno | when |", "|---|---|"]
        lines += [f"| {errno_name} | {md(when)} |" for errno_name, when in ioctl.errors]
    return lines


def _md_struct(model: Model, name: str) -> list[str]:
    struct = model.structs[name]
    sizes = f"{struct.size} bytes" + (
        f", older sizes {', '.join(map(str, struct.sizes[:-1]))}" if len(struct.sizes) > 1 else ""
    )
    lines = [
        "",
        f'<a id="struct-{struct.name}"></a>',
        "",
        f"#### `struct {struct.name}` ({sizes})",
        "",
        md(struct.doc),
    ]
    if struct.waive:
        rules = ", ".join(f"`{rule}`" for rule in struct.waive)
        lines += ["", f"Kernel ABI exemption from {rules}: {md(struct.waive_why)}"]
    with_dir = model.families[struct.family].kind == "ioctl"
    if with_dir:
        lines += ["", "| offset | type | name | dir | doc |", "|---|---|---|---|---|"]
    else:
        lines += ["", "| offset | type | name | doc |", "|---|---|---|---|"]
    lines += [_md_field_row(field, with_dir=with_dir) for field in struct.fields]
    return lines


def _md_type(field: Field) -> str:
    if field.struct is None:
        return f"`{field.type}`"
    return f"[`struct {field.struct}`](#struct-{field.struct})" + (f"\\[{field.count}\\]" if field.count else "")


def _md_kind(field: Field) -> str:
    """What a field's integer refers to ("GEM handle", "fd: dma-buf or sync_file"), or ""."""
    if field.handle is not None:
        label = _HANDLE_LABELS[field.handle]
        if field.direction == "out":
            label = f"new {label}"
        elif field.new:
            label = f"{label} not yet in use"
    elif field.fd:
        label = "fd: " + " or ".join(_FD_LABELS[kind] for kind in field.fd)
    else:
        return ""
    return f"elements: {label}" if field.is_pointer else label


def _md_field_row(field: Field, *, with_dir: bool = True) -> str:
    notes = [_md_kind(field), f"flags: `{field.flags}`" if field.flags else ""]
    notes += [f"enum: `{field.enum}`" if field.enum else ""]
    notes += [
        f"points to `{field.points_to}`" if field.points_to else "",
        f"since {md(field.since)}" if field.since else "",
    ]
    notes += [f"kernel type `{field.kernel_c_type}`" if field.kernel_c_type else ""]
    notes += ["implicit in the kernel header" if field.kernel_implicit else ""]
    extra = "; ".join(note for note in notes if note)
    doc = md(field.doc) + (f" ({extra})" if extra else "")
    direction = f" {field.direction} |" if with_dir else ""
    return f"| {field.offset} | {_md_type(field)} | `{field.name}` |{direction} {doc} |"


def _md_flagset(model: Model, name: str) -> list[str]:
    flagset = model.flagsets[name]
    mask = "none" if flagset.mask is None else f"`{flagset.mask:#x}`"
    lines = ["", f"#### `{flagset.name}` (mask {mask})", "", md(flagset.doc)]
    return lines + _md_members(model, flagset.members, hexadecimal=True)


def _md_enum(model: Model, name: str) -> list[str]:
    enum = model.enums[name]
    return ["", f"#### `{enum.name}`", "", md(enum.doc), *_md_members(model, enum.members, hexadecimal=False)]


def _md_members(model: Model, members: Sequence[str], *, hexadecimal: bool) -> list[str]:
    if not members:
        return ["", "No members."]
    lines = ["", "| name | value | doc |", "|---|---|---|"]
    for member in members:
        constant = model.constants[member]
        value = f"{constant.value:#x}" if hexadecimal else fmt_int(constant.value)
        lines.append(f"| `{member}` | `{value}` | {md(constant.doc)} |")
    return lines


def _md_constants(model: Model, family: Family) -> list[str]:
    if not family.constants:
        return []
    lines = ["", "### Constants", "", "| name | value | doc |", "|---|---|---|"]
    for name in family.constants:
        constant = model.constants[name]
        lines.append(f"| `{name}` | `{fmt_int(constant.value)}` | {md(constant.doc)} |")
    return lines


def _md_helpers(model: Model, family: Family) -> list[str]:
    """Each helper's doc and code: its code is part of the contract a C caller relies on."""
    if not family.helpers:
        return []
    lines = ["", "### C helpers", "", md(_C_HELPERS_AVAILABILITY)]
    for helper in (model.helpers[name] for name in family.helpers):
        lines += ["", f"#### `{helper.name}()`"]
        for paragraph in filter(None, helper.doc.split("\n")):
            lines += ["", md(paragraph)]
        lines += ["", "```c", *helper.code.split("\n"), "```"]
    return lines


# --------------------------------------------------------------------------- entry point


def render_all(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """Every generated file's text, keyed by its path relative to the repository root."""
    model = build_model(documents)
    return {DEFS_PATH: render_defs(model), HEADER_PATH: render_header(model), DOCS_PATH: render_docs(model)}


def stale_outputs(outputs: Mapping[str, str], root: Path = REPO_ROOT) -> list[str]:
    """Generated files whose committed text differs from ``outputs``."""
    stale = []
    for relative, text in outputs.items():
        path = root / relative
        if not path.exists() or path.read_text() != text:
            stale.append(relative)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=GENERATOR, description="Generate the uapi outputs from spec/*.yaml."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 and name stale outputs instead of writing"
    )
    args = parser.parse_args(argv)
    try:
        outputs = render_all(load_documents())
    except SpecError as error:
        print(error, file=sys.stderr)
        return 1
    if args.check:
        stale = stale_outputs(outputs)
        for relative in stale:
            print(f"{relative}: stale, run `{GENERATOR}`", file=sys.stderr)
        return 1 if stale else 0
    for relative, text in outputs.items():
        path = REPO_ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
