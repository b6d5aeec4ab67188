"""The uapi coverage gate: the DRM rule ("new uapi needs open userspace using it") made executable.

Every ioctl, every flag of every flag set, every documented error path (each (ioctl,
errno) pair under ``errors:`` in the YAML) and every ISA opcode must be exercised by
the open userspace and its tests. Daemons started with ``emudev mount --coverage PATH``
(the test suite's, with EMUDEV_COVERAGE=DIR) write what their clients used;
``python -m emudev.uapi.coverage DIR...`` merges those files, compares them with the
uapi and exits 1 if anything is unused and not waived below with a reason.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emudev.trace.decode import member_owner
from emudev.uapi import defs

FORMAT = "emudev-uapi-coverage/1"
KINDS = ("ioctl", "flag", "error", "opcode")


@dataclass
class Coverage:
    """What clients used: ioctls called, (ioctl, errno name) results, (flag set, ioctl, value)
    seen in flags fields, and packet names submitted."""

    ioctls: set[str] = field(default_factory=set)
    errors: set[tuple[str, str]] = field(default_factory=set)
    flags: set[tuple[str, str, int]] = field(default_factory=set)
    opcodes: set[str] = field(default_factory=set)

    def update(self, other: Coverage) -> bool:
        """Add `other`'s items; True if any was new."""
        before = self.size()
        self.ioctls |= other.ioctls
        self.errors |= other.errors
        self.flags |= other.flags
        self.opcodes |= other.opcodes
        return self.size() != before

    def size(self) -> int:
        return len(self.ioctls) + len(self.errors) + len(self.flags) + len(self.opcodes)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "ioctls": sorted(self.ioctls), "errors": sorted(map(list, self.errors)),
                "flags": sorted(map(list, self.flags)), "opcodes": sorted(self.opcodes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Coverage:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        return cls(set(data["ioctls"]), {(i, e) for i, e in data["errors"]},
                   {(s, i, int(v)) for s, i, v in data["flags"]}, set(data["opcodes"]))

    def save(self, path: str) -> None:
        """Atomically: a daemon killed while writing leaves the previous file."""
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".coverage-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)


def load(paths: Iterable[str]) -> tuple[Coverage, int]:
    """Merge the coverage files named, or found (``*.json``) in the directories named; and their number."""
    merged, count = Coverage(), 0
    for path in paths:
        files = sorted(Path(path).glob("*.json")) if os.path.isdir(path) else [Path(path)]
        for file in files:
            merged.update(Coverage.from_json(json.loads(file.read_text())))
            count += 1
    return merged, count


# -- what the uapi asks for ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One thing of the uapi that must be used: its kind, its name as waivers and reports
    spell it (``IOCTL``, ``flagset.MEMBER``, ``IOCTL ERRNO``, ``PACKET``) and what it means."""

    kind: str
    name: str
    detail: str = ""


def required() -> list[Item]:
    items = [Item("ioctl", spec.name) for spec in defs.IOCTLS]
    items += [Item("flag", f"{flagset.name}.{member}", f"{value:#x}")
              for flagset in defs.FLAGSETS.values() for member, value in flagset.members.items()]
    for spec in defs.IOCTLS:
        whens: dict[str, list[str]] = {}
        for code, when in spec.errors:
            whens.setdefault(code, []).append(when)
        items += [Item("error", f"{spec.name} {code}", "; ".join(text)) for code, text in whens.items()]
    items += [Item("opcode", name) for name in defs.PACKETS_BY_NAME]
    return items


def documented_errors() -> set[tuple[str, int]]:
    """Every (ioctl, errno) the uapi documents, the ioctl's own errors and its family's (by value,
    so that an alias such as ENOTSUP names EOPNOTSUPP)."""
    return {(spec.name, getattr(errno, code)) for spec in defs.IOCTLS
            for code, _ in (*spec.errors, *defs.FAMILIES[spec.family].errors)}


def covered(item: Item, coverage: Coverage) -> bool:
    """A flag member is used when a flags field of its set held all its bits in one of the
    ioctls it belongs to (see ``member_owner``); a member of value 0 (DMA_BUF_SYNC_START)
    names the absence of bits and is used by any use of its flag set."""
    if item.kind == "ioctl":
        return item.name in coverage.ioctls
    if item.kind == "error":
        ioctl, code = item.name.split()
        return (ioctl, getattr(errno, code)) in {(i, getattr(errno, c, None)) for i, c in coverage.errors}
    if item.kind == "opcode":
        return item.name in coverage.opcodes
    flagset, member = item.name.split(".")
    bits = defs.FLAGSETS[flagset].members[member]
    owner = member_owner(flagset, member)
    seen = [value for name, ioctl, value in coverage.flags if name == flagset and owner in (None, ioctl)]
    return any(value & bits == bits for value in seen)


# -- waivers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiver:
    kind: str
    name: str
    why: str


_KERNEL_FUSE_EFAULT = ("the kernel's FUSE layer copies the argument struct itself and fails a bad pointer "
                       "with EFAULT before the daemon sees the request")
_KMS_ONLY = "documented for KMS (DRIVER_MODESET) drivers; an accel device never is one and answers EOPNOTSUPP"
WAIVERS: tuple[Waiver, ...] = (
    Waiver("error", "DRM_IOCTL_GET_CAP EINVAL", _KMS_ONLY),
    Waiver("error", "DRM_IOCTL_SET_CLIENT_CAP EINVAL", _KMS_ONLY),
    Waiver("error", "SW_SYNC_IOC_CREATE_FENCE EFAULT", _KERNEL_FUSE_EFAULT),
    Waiver("error", "SW_SYNC_IOC_INC EFAULT", _KERNEL_FUSE_EFAULT),
    Waiver("error", "SW_SYNC_GET_DEADLINE EFAULT", _KERNEL_FUSE_EFAULT),
    Waiver("error", "SW_SYNC_IOC_CREATE_FENCE EMFILE",
           "the fence's fd is a ticket the caller claims with open(); a full fd table fails that open, "
           "not the ioctl"),
)


# -- the gate ---------------------------------------------------------------------------------------


@dataclass
class Report:
    files: int
    totals: dict[str, int]
    used: dict[str, int]
    unused: list[Item]
    waived: list[tuple[Item, Waiver]]
    needless: list[Waiver]  # waivers of items that are used, or not in the uapi
    undocumented: list[tuple[str, str]]  # (ioctl, errno) returned but not listed under errors:

    @property
    def passed(self) -> bool:
        return not self.unused and not self.undocumented


def check(coverage: Coverage, files: int, waivers: Sequence[Waiver] = WAIVERS) -> Report:
    items = required()
    by_name = {(w.kind, w.name): w for w in waivers}
    totals = {kind: sum(1 for i in items if i.kind == kind) for kind in KINDS}
    used = {kind: sum(1 for i in items if i.kind == kind and covered(i, coverage)) for kind in KINDS}
    missing = [i for i in items if not covered(i, coverage)]
    waived = [(i, by_name[(i.kind, i.name)]) for i in missing if (i.kind, i.name) in by_name]
    waived_names = {(i.kind, i.name) for i, _ in waived}
    needless = [w for w in waivers if (w.kind, w.name) not in waived_names]
    documented = documented_errors()
    undocumented = sorted((i, e) for i, e in coverage.errors if (i, getattr(errno, e, None)) not in documented)
    return Report(files, totals, used, [i for i in missing if (i.kind, i.name) not in waived_names], waived,
                  needless, undocumented)


def render(report: Report) -> str:
    counts = ", ".join(f"{report.used[k]}/{report.totals[k]} {k}s" for k in KINDS)
    lines = [f"uapi coverage from {report.files} daemon(s): {counts}"]
    for kind in KINDS:
        unused = [i for i in report.unused if i.kind == kind]
        if unused:
            lines.append(f"unused {kind}s ({len(unused)}):")
            lines += [f"  {i.name}" + (f"  ({i.detail})" if i.detail else "") for i in unused]
    if report.waived:
        lines.append(f"waived ({len(report.waived)}):")
        lines += [f"  {i.name}: {w.why}" for i, w in report.waived]
    if report.needless:
        lines.append("waivers to remove (the item is used, or not in the uapi):")
        lines += [f"  {w.kind} {w.name}" for w in report.needless]
    if report.undocumented:
        lines.append(f"errnos returned but documented neither under the ioctl's errors: nor its family's "
                     f"({len(report.undocumented)}):")
        lines += [f"  {i} {e}" for i, e in report.undocumented]
    if report.passed:
        lines.append("PASS: every uapi element is exercised, every errno returned is documented")
    else:
        lines.append(f"FAIL: {len(report.unused)} uapi element(s) unused, {len(report.undocumented)} errno(s) "
                     "undocumented")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emudev.uapi.coverage",
                                     description="Compare the uapi used by clients with the uapi spec.")
    parser.add_argument("paths", nargs="+", metavar="DIR|FILE", help="coverage files, or directories of them")
    args = parser.parse_args(argv)
    coverage, files = load(args.paths)
    if not files:
        print(f"no coverage files in {' '.join(args.paths)}: run the tests with EMUDEV_COVERAGE=DIR",
              file=sys.stderr)
        return 2
    report = check(coverage, files)
    print(render(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
