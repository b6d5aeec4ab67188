"""uapi linter: the kernel's rules for ioctl ABI, checked on the YAML spec.

``python -m emudev.uapi.lint [SPEC ...]`` prints one line per problem and exits 1
if there is any. The rules are those of Documentation/gpu/drm-uapi.rst and
Documentation/process/botching-up-ioctls.rst: a struct must look the same to
32- and 64-bit callers and be extensible by zero-extension, so padding is
explicit, 64-bit members are 8-aligned, user pointers travel in ``__u64`` and no
C type whose size depends on the ABI appears.

The driver's own family gets every rule. The command-stream ISA (the document with
``packets``) gets the struct rules too: its packets and structs are bytes shared
with user space just the same, and every packet's size is a multiple of the
stream alignment (``DRM_EMUDEV_PKT_ALIGN``), with explicit padding. Only the ISA
may hold ``f32`` fields: the kernel's uapi never carries floating point.

Families with ``origin: kernel`` are
transcriptions of kernel ABI that cannot be changed; a struct there may waive a
struct rule the kernel header itself breaks, but only explicitly in YAML
(``kernel-abi: {waive: [...], why: ...}``), and a waiver that is not needed is
itself a problem, so exemptions cannot outlive their reason.

Beyond the kernel's rules, a field named like a handle or an fd says which kind
it holds (``handle:`` or ``fd:``), so that the fuzzer and the reference read it
from the spec instead of guessing from the name.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emudev.uapi.gen import (
    SPEC_DIR,
    Field,
    Model,
    SpecError,
    Struct,
    build_model,
    load_documents,
    parse_document,
)

WAIVABLE_RULES = ("explicit-padding", "u64-alignment", "user-pointer", "c-types")
PERMISSIONS = ("render_allow", "auth", "master", "root_only")
FEATURES = ("gem", "syncobj", "syncobj_timeline", "modeset")
DRIVER_NR_RANGE = range(0x40, 0xA0)
_ERRNO_NAMES = tuple(name for name in dir(errno) if name.startswith("E"))
_INTEGER_TYPES = ("u8", "s8", "u16", "s16", "u32", "s32", "u64", "s64")
_ABI_DEPENDENT_C_TYPES = (
    "bool",
    "_Bool",
    "enum",
    "long",
    "size_t",
    "ssize_t",
    "__kernel_size_t",
    "ptrdiff_t",
)


@dataclass(frozen=True)
class Problem:
    """One rule violation, printed as ``path: rule: message``."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}: {self.message}"


def lint_documents(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Problem]:
    """Lint parsed spec files; a schema error stops at that error."""
    try:
        model = build_model(documents)
    except SpecError as error:
        return [Problem(error.path, error.rule, error.message)]
    return lint_model(model)


def lint_model(model: Model) -> list[Problem]:
    """Every rule over a built model."""
    problems = _struct_problems(model)
    checks = (
        _floats,
        _packets,
        _flag_sets,
        _ioctl_numbers,
        _ioctl_vocabulary,
        _ioctl_directions,
        _declared_kinds,
        _documentation,
    )
    for check in checks:
        problems += check(model)
    return problems


# --------------------------------------------------------------------------- struct rules


def _struct_problems(model: Model) -> list[Problem]:
    problems = []
    for struct in model.structs.values():
        origin = model.families[struct.family].origin
        findings = list(_waivable_findings(struct))
        problems += _apply_waivers(struct, origin, findings)
        problems += [Problem(struct.path, rule, message) for rule, message in _fixed_findings(struct)]
    return problems


def _waivable_findings(struct: Struct) -> Iterator[tuple[str, str]]:
    yield from _padding(struct)
    yield from _u64_alignment(struct)
    yield from _user_pointers(struct)
    yield from _c_types(struct)


def _apply_waivers(struct: Struct, origin: str, findings: list[tuple[str, str]]) -> list[Problem]:
    """Drop findings a kernel transcription waives; report waivers that are wrong or unneeded."""

    def waiver_problem(message: str) -> Problem:
        return Problem(struct.path, "kernel-abi", f"struct {struct.name}: {message}")

    problems = []
    if struct.waive and origin != "kernel":
        problems.append(waiver_problem("the driver's own uapi waives nothing"))
    found = {rule for rule, _ in findings}
    for rule in struct.waive:
        if rule not in WAIVABLE_RULES:
            problems.append(waiver_problem(f"{rule} cannot be waived"))
        elif rule not in found:
            problems.append(waiver_problem(f"waives {rule} but keeps it"))
    waived = set(struct.waive) if origin == "kernel" else set()
    problems += [Problem(struct.path, rule, message) for rule, message in findings if rule not in waived]
    return problems


def _padding(struct: Struct) -> Iterator[tuple[str, str]]:
    """Implicit holes and tail padding leak kernel stack bytes and differ between ABIs."""
    end = 0
    for field in struct.fields:
        if field.offset > end:
            yield (
                "explicit-padding",
                f"struct {struct.name}: {field.offset - end}-byte hole before {field.name}",
            )
        if field.kernel_implicit:
            yield (
                "explicit-padding",
                f"struct {struct.name}: {field.name} is padding the kernel leaves implicit",
            )
        end = field.offset + field.size
    if struct.size > end:
        yield "explicit-padding", f"struct {struct.name}: {struct.size - end} bytes of tail padding"


def _u64_alignment(struct: Struct) -> Iterator[tuple[str, str]]:
    """i386 aligns 64-bit members to 4: only an 8-aligned packed offset gives one layout for both."""
    packed = 0
    for field in struct.fields:
        if field.align == 8 and packed % 8:
            yield (
                "u64-alignment",
                f"struct {struct.name}: {field.name} ({field.type}) at packed offset {packed}",
            )
        packed += field.size


def _user_pointers(struct: Struct) -> Iterator[tuple[str, str]]:
    for field in struct.fields:
        if field.points_to and not field.is_pointer:
            yield (
                "user-pointer",
                f"struct {struct.name}: {field.name} points to {field.points_to} but is {field.type}",
            )
        if field.is_pointer and not field.points_to:
            yield "user-pointer", f"struct {struct.name}: ptr {field.name} does not say what it points to"


def _c_types(struct: Struct) -> Iterator[tuple[str, str]]:
    for field in struct.fields:
        c_type = field.kernel_c_type or ""
        if "*" in c_type or any(word in _ABI_DEPENDENT_C_TYPES for word in c_type.split()):
            yield (
                "c-types",
                f"struct {struct.name}: {field.name} is {c_type} in C, whose size depends on the ABI",
            )


def _fixed_findings(struct: Struct) -> Iterator[tuple[str, str]]:
    for field in struct.fields:
        if field.name == "flags" and field.flags is None:
            yield "flags-mask", f"struct {struct.name}: flags field does not name a flag set"
    since = [field.since is not None for field in struct.fields]
    if any(since) and since[since.index(True) :].count(False):
        yield "append-only", f"struct {struct.name}: fields added later (since) must all come last"


def _floats(model: Model) -> list[Problem]:
    """f32 belongs to the command stream: an ioctl struct holds none, not even in a nested struct."""

    def float_path(struct: Struct) -> str | None:
        for field in struct.fields:
            if field.is_float:
                return field.name
            inner = float_path(model.structs[field.struct]) if field.struct else None
            if inner:
                return f"{field.name}.{inner}"
        return None

    problems = []
    for struct in model.structs.values():
        if model.families[struct.family].kind == "isa":
            continue
        found = float_path(struct)
        if found:
            message = f"struct {struct.name}: {found} is f32; only the command-stream ISA carries floating point"
            problems.append(Problem(struct.path, "no-float", message))
    return problems


def _packets(model: Model) -> list[Problem]:
    """Packets tile the stream, and each one goes to an engine: its opcode's or its engine field's."""
    problems = []
    for packet in model.packets.values():
        struct = model.structs[packet.struct]
        prefix = (model.families[packet.family].prefix or "").lower()
        align = model.constants[f"{prefix.upper()}_PKT_ALIGN"]
        if struct.size % align.value:
            message = (
                f"packet {packet.name}: struct {struct.name} is {struct.size} bytes, not a multiple of "
                f"{align.name} ({align.value}); pad it explicitly"
            )
            problems.append(Problem(packet.path, "explicit-padding", message))
        engine_field = next((field for field in struct.fields if field.name == "engine"), None)
        if packet.engine is None and (engine_field is None or engine_field.enum != f"{prefix}_engine"):
            message = f"packet {packet.name}: names no engine, so it needs an engine field (enum {prefix}_engine)"
            problems.append(Problem(packet.path, "packet-engine", message))
        if packet.engine is not None and engine_field is not None:
            message = f"packet {packet.name}: runs on {packet.engine} yet has an engine field"
            problems.append(Problem(packet.path, "packet-engine", message))
    for family in model.families.values():
        header = model.structs.get(f"{(family.prefix or '').lower()}_pkt_header")
        if family.kind != "isa" or header is None:
            continue
        opcode = next(field for field in header.fields if field.name == "opcode")
        if opcode.enum != f"{family.prefix.lower()}_opcode":
            message = f"struct {header.name}: opcode must name enum {family.prefix.lower()}_opcode"
            problems.append(Problem(header.path, "packet-header", message))
    return problems


def _flag_sets(model: Model) -> list[Problem]:
    return [
        Problem(flagset.path, "flags-mask", f"flag set {flagset.name} has no mask")
        for flagset in model.flagsets.values()
        if flagset.mask is None
    ]


# --------------------------------------------------------------------------- ioctl rules


def _ioctl_numbers(model: Model) -> list[Problem]:
    """One handler per (type, nr) in a family; the driver's live in [DRM_COMMAND_BASE, DRM_COMMAND_END)."""
    problems = []
    by_number: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for ioctl in model.ioctls.values():
        by_number[(ioctl.family, ioctl.type, ioctl.nr)].append(ioctl.name)
        if model.families[ioctl.family].origin == "driver" and ioctl.nr not in DRIVER_NR_RANGE:
            problems.append(
                Problem(ioctl.path, "driver-range", f"{ioctl.name}: nr {ioctl.nr:#04x} outside 0x40..0x9f")
            )
    for (family, _, nr), names in by_number.items():
        if len(names) > 1:
            path = model.families[family].path
            problems.append(
                Problem(path, "unique-nr", f"nr {nr:#04x} used by {', '.join(names)}; declare variants")
            )
    return problems


def _ioctl_vocabulary(model: Model) -> list[Problem]:
    problems = []
    for ioctl in model.ioctls.values():
        for name, known, what in (
            *((name, PERMISSIONS, "permission") for name in ioctl.permissions),
            *((name, FEATURES, "required feature") for name in ioctl.requires),
            *((name, _ERRNO_NAMES, "errno") for name, _ in (*ioctl.errors, *model.families[ioctl.family].errors)),
        ):
            if name not in known:
                problems.append(Problem(ioctl.path, "vocabulary", f"{ioctl.name}: unknown {what} {name}"))
        if model.families[ioctl.family].origin == "driver" and not ioctl.errors:
            problems.append(
                Problem(ioctl.path, "documented", f"{ioctl.name}: the driver's ioctls list their errors")
            )
    return problems


def _ioctl_directions(model: Model) -> list[Problem]:
    """An output field of an _IOW ioctl never reaches the caller; an input of an _IOR never the kernel."""
    unreachable = {"iow": "out", "ior": "in", "io": ""}
    problems = []
    for ioctl in model.ioctls.values():
        lost = unreachable.get(ioctl.dir_name)
        for field in model.ioctl_fields(ioctl.name):
            if lost is not None and lost in field.direction:
                kind = f"_{ioctl.dir_name.upper()}"
                message = f"{ioctl.name}: field {field.name} is {field.direction} but the ioctl is {kind}"
                problems.append(Problem(ioctl.path, "direction", message))
    return problems


# --------------------------------------------------------------------------- handle and fd kinds


def _declared_kinds(model: Model) -> list[Problem]:
    """A field named like a handle or an fd declares its kind, in its struct or for every ioctl using it.

    An fd the device returns is exempt: it is a ticket, whatever file it stands for. Only a
    struct that is nothing but ioctl arguments may leave the kind to each ioctl's ``fields``;
    one nested in another or pointed at is read without an ioctl to say it.
    """
    reached = _reached_structs(model)
    users: dict[str, list[str]] = defaultdict(list)
    for ioctl in model.ioctls.values():
        users[ioctl.struct].append(ioctl.name)
    problems = []
    for struct in model.structs.values():
        if model.families[struct.family].kind == "isa":
            continue
        for index, field in enumerate(struct.fields):
            if not _needs_kind(field) or _kind_known(field):
                continue
            if struct.name in reached or not users[struct.name]:
                problems.append(_undeclared(struct.path, f"struct {struct.name}", struct, field, "to the field"))
                continue
            for name in users[struct.name]:
                used = model.ioctl_fields(name)[index]
                if not _kind_known(used):
                    where = model.ioctls[name].path
                    problems.append(_undeclared(where, name, struct, used, "to the field or to the ioctl's fields"))
    return problems


def _reached_structs(model: Model) -> set[str]:
    """Structs nested in another struct or pointed at by a field's ``points-to``."""
    reached = set()
    for struct in model.structs.values():
        for field in struct.fields:
            element = field.pointee[0] if field.pointee else None
            if field.struct is not None or element in model.structs:
                reached.add(field.struct or element)
    return reached


def _needs_kind(field: Field) -> bool:
    """An integer (or a pointer to integers) named ``handle(s)``/``*_handle``, or an s32 ``fd``/``fdN``/``*_fd``."""
    if field.is_pointer:
        base = field.pointee[0] if field.pointee else None
    else:
        base = field.base
    if field.named_like_handle:
        return base in _INTEGER_TYPES
    return field.named_like_fd and base == "s32"


def _kind_known(field: Field) -> bool:
    """Declared, or an fd the device returns: a ticket, whatever kind of file the call made."""
    return field.declares_kind or (field.direction == "out" and field.named_like_fd)


def _undeclared(path: str, where: str, struct: Struct, field: Field, remedy: str) -> Problem:
    what = "an fd" if field.named_like_fd else "a handle"
    message = f"{where}: {struct.name}.{field.name} looks like {what} of no declared kind; add handle: or fd: {remedy}"
    return Problem(path, "handle-kind", message)


# --------------------------------------------------------------------------- documentation


def _documentation(model: Model) -> list[Problem]:
    """Everything a uapi user can name carries a doc: the spec is the reference."""
    items: list[tuple[str, str, str]] = []
    items += [(family.path, f"family {family.name}", family.doc) for family in model.families.values()]
    items += [(ioctl.path, f"ioctl {ioctl.name}", ioctl.doc) for ioctl in model.ioctls.values()]
    items += [(v.path, f"flag set {v.name}", v.doc) for v in model.flagsets.values()]
    items += [(v.path, f"enum {v.name}", v.doc) for v in model.enums.values()]
    items += [(v.path, f"constant {v.name}", v.doc) for v in model.constants.values()]
    items += [(v.path, f"C helper {v.name}", v.doc) for v in model.helpers.values()]
    for struct in model.structs.values():
        what = f"packet {struct.packet}" if struct.packet else f"struct {struct.name}"
        items.append((struct.path, what, struct.doc))
        items += [(struct.path, f"field {struct.name}.{field.name}", field.doc) for field in struct.fields]
    for ioctl in model.ioctls.values():
        items += [
            (ioctl.path, f"{ioctl.name} variant {variant.name}", variant.doc) for variant in ioctl.variants
        ]
    return [Problem(path, "documented", f"{what} has no doc") for path, what, doc in items if not doc.strip()]


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emudev.uapi.lint", description=__doc__.splitlines()[0])
    parser.add_argument(
        "specs", nargs="*", type=Path, help="spec files (default: every emudev/uapi/spec/*.yaml)"
    )
    args = parser.parse_args(argv)
    try:
        if args.specs:
            documents = [(str(path), parse_document(path.read_text(), str(path))) for path in args.specs]
        else:
            documents = load_documents(SPEC_DIR)
    except (SpecError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    problems = lint_documents(documents)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
