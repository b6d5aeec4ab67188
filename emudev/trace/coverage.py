"""The daemon's side of the uapi coverage gate: what each traced ioctl used, written to a file.

The file is rewritten (atomically) whenever something new is used; a uapi has a few
hundred items, so that is rare, and a daemon killed at any point leaves what it saw.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from emudev.trace.capture import Call
from emudev.trace.decode import argument, errno_name, pointed_structs, stream_packets, walk_flags
from emudev.uapi import defs
from emudev.uapi.coverage import Coverage

_ALL = ("in", "out", "inout")
# Flag sets carried by a value rather than a flags field: ioctl → (selector field, its value
# naming the set, the value field, the flag set). GET_CAP(DRM_CAP_PRIME) answers drm_prime_cap bits.
VALUE_FLAGSETS = {"DRM_IOCTL_GET_CAP": ("capability", defs.DRM_CAP_PRIME, "value", "drm_prime_cap")}


def coverage_path(path: str) -> str:
    """PATH itself, or a file of this daemon's own in the directory PATH."""
    return os.path.join(path, f"emudev-coverage-{os.getpid()}.json") if os.path.isdir(path) else path


class CoverageRecorder:
    def __init__(self, path: str) -> None:
        self.path = coverage_path(path)
        self.data = Coverage()
        self._lock = threading.Lock()
        self.data.save(self.path)  # even a daemon nobody used leaves its (empty) file

    def add(self, call: Call) -> None:
        spec = call.spec
        if spec is None:
            return
        code = errno_name(call.result)
        packets = stream_packets(call.stream) if call.stream is not None else []
        found = Coverage(ioctls={spec.name}, errors={(spec.name, code)} if code else set(),
                         flags={(flagset, spec.name, value) for flagset, value in _flags(call)},
                         opcodes={p.spec.name for p in packets} if not isinstance(packets, str) else set())
        with self._lock:
            if self.data.update(found):
                self.data.save(self.path)


def _flags(call: Call) -> Iterator[tuple[str, int]]:
    """Every flags value the call carried: argument, pointed-to arrays, packets, and what came back."""
    spec = call.spec
    assert spec is not None
    arg = argument(spec, call.in_bytes, call.arg)
    if call.in_bytes or spec.by_value:
        yield from walk_flags(arg, ("in", "inout"))
        for element in pointed_structs(arg, call.reads):
            yield from walk_flags(element, _ALL)
    if call.stream is not None and not isinstance(packets := stream_packets(call.stream), str):
        for packet in packets:
            yield from walk_flags(packet.packet, _ALL)
    if call.result < 0 or not call.out_bytes:
        return
    out = spec.struct.from_bytes(call.out_bytes)
    yield from walk_flags(out, ("out", "inout"))
    carried = VALUE_FLAGSETS.get(spec.name)
    if carried is not None and getattr(arg, carried[0]) == carried[1]:
        yield carried[3], int(getattr(out, carried[2]))
