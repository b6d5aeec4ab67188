"""A request as data: what to issue, on which file, with which bytes and user pointers.

Plans are drawn in the test process and may run in another one (a forked helper), so
they hold no address and no absolute time: pointers and deadlines are slots the
executor fills in the process that issues the request, right before it does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Kinds of user pointer.
BUFFER = "buffer"  # payload placed so that its last byte is followed by an inaccessible page
NULL = "null"      # 0
WILD = "wild"      # `value`: an address no process maps (below mmap_min_addr, or not canonical)
GUARD = "guard"    # an address inside an inaccessible (PROT_NONE) page of the issuing process


@dataclass(frozen=True)
class Pointer:
    """A user pointer stored at `offset` of the argument (8 bytes, or the whole by-value argument)."""

    offset: int
    kind: str
    payload: bytes = b""
    value: int = 0

    def describe(self) -> str:
        if self.kind == BUFFER:
            return f"@{self.offset}->buf[{len(self.payload)}]"
        if self.kind == WILD:
            return f"@{self.offset}->{self.value:#x}"
        return f"@{self.offset}->{self.kind}"


@dataclass(frozen=True)
class Deadline:
    """An absolute CLOCK_MONOTONIC time `delta_ns` from the moment of the call, at `offset` (8 bytes)."""

    offset: int
    delta_ns: int


@dataclass(frozen=True)
class CallPlan:
    """One request. `fd` is the descriptor in the issuing process, `kind` the kind of file it is.

    `arg` is the whole argument buffer (at least `_IOC_SIZE(cmd)` bytes); `arg_kind` is
    BUFFER, or NULL/GUARD to pass a bad argument pointer. `ticket_fields` are (offset,
    size) of the signed out fields where the device may leave an fd ticket to claim.
    `ioctl` names the spec the plan was drawn from, `labels` what was broken on purpose.
    """

    ioctl: str
    fd: int
    kind: str
    cmd: int
    arg: bytes
    pointers: tuple[Pointer, ...] = ()
    deadlines: tuple[Deadline, ...] = ()
    arg_kind: str = BUFFER
    by_value: bool = False
    ticket_fields: tuple[tuple[int, int], ...] = ()
    labels: tuple[str, ...] = ()
    client: int = -1

    @property
    def bad_arg(self) -> bool:
        """The argument pointer itself cannot be read (for a by-value request: the pointer it is)."""
        if self.by_value:
            return any(p.kind != BUFFER for p in self.pointers if p.offset == 0)
        return self.arg_kind != BUFFER

    def describe(self) -> str:
        """One line for reports: the request, the file, the bytes, the pointers."""
        parts = [f"{self.ioctl} cmd={self.cmd:#010x} on {self.kind} fd {self.fd}"]
        if self.labels:
            parts.append("broken=" + ",".join(self.labels))
        parts.append(f"arg={self.arg.hex()}" if self.arg_kind == BUFFER else f"arg={self.arg_kind}")
        parts += [p.describe() + (f"={p.payload.hex()}" if p.payload else "") for p in self.pointers]
        parts += [f"@{d.offset}=now{d.delta_ns:+d}ns" for d in self.deadlines]
        return " ".join(parts)


@dataclass
class CallResult:
    """What came back: errno 0 for success, the argument's bytes, fds claimed from tickets."""

    err: int
    ret: int
    out: bytes
    elapsed: float
    claimed: list[tuple[int, str]] = field(default_factory=list)


def put_int(buf: bytearray, offset: int, size: int, value: int) -> None:
    """Store `value` as `size` little-endian bytes, two's complement, truncated to fit."""
    buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def get_int(buf: bytes, offset: int, size: int, signed: bool = False) -> int:
    return int.from_bytes(buf[offset:offset + size], "little", signed=signed)


def put_f32(buf: bytearray, offset: int, value: float) -> None:
    buf[offset:offset + 4] = struct.pack("<f", value)
