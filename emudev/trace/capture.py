"""What the tracer captures of a request while it runs, before anything is decoded.

Capturing is all the traced request pays for: bytes are copied, nothing is decoded or
formatted. Decoding happens when a reader reads (emudev.trace.decode), so a slow or
absent reader never slows the device down more than the copies do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from emudev.drm.usermem import UserMemory
from emudev.uapi.types import IoctlSpec


class Event:
    """A traced request other than an ioctl (open, release, page read/write, poll), or a
    "lost" marker: small enough to be built as its JSON fields at once."""

    __slots__ = ("_line", "fields", "tgid")

    def __init__(self, tgid: int, fields: dict[str, Any]) -> None:
        self.tgid = tgid
        self.fields = fields
        self._line: bytes | None = None

    def line(self) -> bytes:
        if self._line is None:
            self._line = encode(self.fields)
        return self._line


@dataclass(eq=False, slots=True)
class Call:
    """One ioctl: who asked, the caller's argument bytes, the user memory the handler read
    and wrote, the command stream SUBMIT copied, the fd tickets it issued and the
    descriptors it looked up, and what went back."""

    seq: int
    t_ns: int
    pid: int
    tgid: int
    comm: str
    fh: int | None
    file: str
    client: int | None
    spec: IoctlSpec | None
    cmd: int
    arg: int
    in_bytes: bytes
    reads: list[tuple[int, bytes | None]] = field(default_factory=list)
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    stream: bytes | None = None
    tickets: list[tuple[int, int | None]] = field(default_factory=list)
    fds: list[tuple[int, int | None]] = field(default_factory=list)
    result: int = 0
    out_bytes: bytes = b""
    end_ns: int = 0
    _line: bytes | None = None

    def line(self) -> bytes:
        """The call as one JSON line, decoded once however many readers read it."""
        if self._line is None:
            from emudev.trace.decode import call_fields  # decoding loads the YAML spec: only on demand

            self._line = encode(call_fields(self))
        return self._line


def encode(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


class RecordingMemory(UserMemory):
    """The caller's memory, remembering every range the handler read (None where the read
    faulted) and wrote: the pointer contents a trace shows and a replay re-creates."""

    def __init__(self, pid: int, call: Call) -> None:
        super().__init__(pid)
        self.call = call

    def read(self, address: int, size: int) -> bytes:
        try:
            data = super().read(address, size)
        except OSError:
            self.call.reads.append((address, None))
            raise
        if data:
            self.call.reads.append((address, data))
        return data

    def write(self, address: int, data: bytes) -> None:
        super().write(address, data)
        if data:
            self.call.writes.append((address, bytes(data)))
