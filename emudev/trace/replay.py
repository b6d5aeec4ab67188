"""Replaying a recorded client on a fresh device, from one process, up to the first divergence.

A recording (`emudev record`) holds, per ioctl, the caller's argument bytes, the user
memory the handler read and wrote, the command stream SUBMIT copied, the fd tickets it
issued and the descriptors it looked up; and the opens, ticket claims and releases of
the client's files. The replay re-creates user buffers at new addresses, substitutes
its own descriptors and tickets, rebases absolute timeouts on its own clock, writes
each recorded command stream into its BO before the SUBMIT, and compares the result
and the out fields. GEM and syncobj handles, context ids and seqnos need no mapping:
they are deterministic per fresh file. Page reads and writes through mappings are not
replayed; only what the ioctls read is.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from emudev.testing import MountedEmudev
from emudev.trace.decode import render
from emudev.uapi import defs
from emudev.uapi.types import FieldSpec, IoctlSpec, UapiStruct, ioc_size

RECORDING = "recording"
REQUEST_TIMEOUT_S = 30.0
INTERRUPTED_SLACK_S = 0.05
INT64_MAX = (1 << 63) - 1
# In fields holding absolute CLOCK_MONOTONIC times: moved by as much as the replay runs later.
TIMEOUT_FIELDS = frozenset({"timeout_nsec", "timeout_ns", "deadline_nsec", "deadline_ns"})
FD_FIELDS = frozenset({"fd", "fd2", "fence_fd"})
# Descriptors the uapi takes that are not files of the mount, made afresh: ioctl → (field, maker).
FOREIGN_FDS = {"DRM_IOCTL_SYNCOBJ_EVENTFD": ("fd", lambda: os.eventfd(0, os.EFD_CLOEXEC))}
# Device-wide names that differ from one device to the next: (ioctl, field) → the map they share.
NAMES = {("DRM_IOCTL_GEM_FLINK", "name"): "flink", ("DRM_IOCTL_GEM_OPEN", "name"): "flink"}
# Out fields whose value depends on the moment or on what the device did before: only zero versus
# non-zero counts. Times; fake offsets; sync_file names, which number fence contexts device-wide.
VOLATILE_SUFFIXES = ("_ns", "_nsec")
VOLATILE_FIELDS = frozenset({(None, "mmap_offset"), ("SYNC_IOC_FILE_INFO", "name")})
SUBMIT = "DRM_IOCTL_EMUDEV_SUBMIT"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


class ReplayError(Exception):
    """A recording that cannot be replayed (not a divergence of the device)."""


@dataclass(frozen=True)
class Divergence:
    index: int
    seq: int
    ioctl: str
    what: str
    recorded: str
    replayed: str

    def __str__(self) -> str:
        return (f"divergence at request {self.index} ({self.ioctl}, seq {self.seq}): {self.what}: "
                f"recorded {self.recorded}, replayed {self.replayed}")


@dataclass(frozen=True)
class Outcome:
    requests: int
    divergence: Divergence | None

    def __str__(self) -> str:
        return str(self.divergence) if self.divergence else f"no divergence in {self.requests} requests"


def read_recording(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the events, in the order the requests began."""
    header: dict[str, Any] = {}
    events = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            event = json.loads(line)
            if event["type"] == RECORDING:
                header = event
            elif "seq" in event:
                events.append(event)
    if not header:
        raise ReplayError(f"{path} is not a recording (no header line): make it with emudev record")
    return header, sorted(events, key=lambda e: e["seq"])


def replay(path: str, devices: int | None = None) -> Outcome:
    header, events = read_recording(path)
    with MountedEmudev(devices=devices or header.get("devices", 1), check=False) as mount, \
            Replayer(mount.mountpoint) as replayer:
        return replayer.run(events)


def _errno_text(result: int) -> str:
    return f"{result} ({errno.errorcode.get(-result, '?')})" if result < 0 else str(result)


def _field(value: UapiStruct, spec: FieldSpec) -> Any:
    item = getattr(value, spec.name)
    return bytes(item) if isinstance(item, ctypes.Array | ctypes.Structure) else item


def _put(buf: bytearray, spec: FieldSpec, value: int) -> None:
    signed = spec.type.startswith("s")
    buf[spec.offset: spec.offset + spec.size] = value.to_bytes(spec.size, "little", signed=signed)


def _get(buf: bytes | bytearray, spec: FieldSpec) -> int:
    return int.from_bytes(buf[spec.offset: spec.offset + spec.size], "little", signed=spec.type.startswith("s"))


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt a request that blocks longer than `seconds` (it then fails with EINTR)."""
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Replayer:
    """Replays events on the mount at `mountpoint`, keeping the recorded → replayed maps."""

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.files: dict[int, int] = {}  # recorded fh → our fd
        self.targets: dict[int, int] = {}  # recorded shared-object key → our fd of it
        self.tickets: dict[int, int] = {}  # recorded ticket → ours
        self.names: dict[str, dict[int, int]] = {}
        self._extra_fds: list[int] = []

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in [*self.files.values(), *self._extra_fds]:
            os.close(fd)
        self.files.clear()
        self._extra_fds.clear()

    def run(self, events: list[dict[str, Any]]) -> Outcome:
        index = 0
        for event in events:
            kind = event["type"]
            if kind == "open":
                self.open(event)
            elif kind == "release":
                self.release(event)
            elif kind == "ioctl":
                divergence = self.ioctl(index, event)
                if divergence is not None:
                    return Outcome(index + 1, divergence)
                index += 1
        return Outcome(index, None)

    # -- files --------------------------------------------------------------------------------------

    def open(self, event: dict[str, Any]) -> None:
        flags = (event["flags"] & os.O_ACCMODE) | os.O_CLOEXEC
        if "ticket" in event:
            ticket = self.tickets.get(event["ticket"])
            if ticket is None:
                raise ReplayError(f"seq {event['seq']}: ticket {event['ticket']} was never issued in the replay")
            fd = os.open(os.path.join(self.mountpoint, "fd", str(-ticket)), flags)
            if event.get("target") is not None:
                self.targets[event["target"]] = fd
        elif event["kind"] == "accel":
            fd = os.open(os.path.join(self.mountpoint, "accel", event["file"].split("/")[0]), flags)
        elif event["kind"] == "sw_sync":
            fd = os.open(os.path.join(self.mountpoint, "sw_sync"), flags)
        else:
            raise ReplayError(f"seq {event['seq']}: cannot open a {event['kind']} file")
        self.files[event["fh"]] = fd

    def release(self, event: dict[str, Any]) -> None:
        fd = self.files.pop(event["fh"], None)
        if fd is None:
            return
        self.targets = {key: value for key, value in self.targets.items() if value != fd}
        os.close(fd)

    # -- ioctls -------------------------------------------------------------------------------------

    def ioctl(self, index: int, event: dict[str, Any]) -> Divergence | None:
        fd = self.files.get(event["fh"])
        if fd is None:
            raise ReplayError(f"request {index} (seq {event['seq']}): its file was opened before the recording "
                              "started; record the client from its start (emudev record -- COMMAND)")
        raw = event["raw"]
        cmd = int(event["cmd"], 16)
        spec = defs.IOCTLS_BY_NAME.get(event["ioctl"] or "")
        in_bytes = bytes.fromhex(raw["in"])
        buf = bytearray(in_bytes.ljust(max(ioc_size(cmd), len(in_bytes)), b"\0"))
        keep: list[ctypes.Array] = []
        arg = raw["arg"]
        patched: set[str] = set()
        if spec is not None:
            arg = self._patch(spec, buf, raw, keep, patched)
            if spec.name == SUBMIT and raw["stream"]:
                self._load_stream(fd, buf, bytes.fromhex(raw["stream"]))
        if spec is None or not spec.by_value:
            array = (ctypes.c_char * max(len(buf), 1)).from_buffer(buf if buf else bytearray(1))
            arg = ctypes.addressof(array)
            keep.append(array)
        recorded = event["result"]
        interrupted = recorded == -errno.EINTR
        with _deadline(event["us"] / 1e6 + (INTERRUPTED_SLACK_S if interrupted else REQUEST_TIMEOUT_S)):
            ret = _libc.ioctl(fd, cmd, arg)
            result = ret if ret >= 0 else -ctypes.get_errno()
        name = event["ioctl"] or event["cmd"]
        if result != recorded:
            return Divergence(index, event["seq"], name, "result", _errno_text(recorded), _errno_text(result))
        if spec is None or not raw["out"]:
            return None
        return self._compare(index, event, spec, bytes.fromhex(raw["out"]), bytes(buf), patched)

    def _patch(self, spec: IoctlSpec, buf: bytearray, raw: dict[str, Any], keep: list[ctypes.Array],
               patched: set[str]) -> int:
        """Our buffers, descriptors, names and clock in the argument; returns the by-value argument."""
        regions = self._buffers(raw, keep)

        def moved(address: int) -> int | None:
            return next((base + address - start for start, end, base in regions if start <= address < end), None)

        fds = {fd: key for fd, key in raw["fds"]}
        foreign = FOREIGN_FDS.get(spec.name)
        for field in spec.struct._specs_:
            if field.offset + field.size > len(buf) or field.direction == "out":
                continue
            value = _get(buf, field)
            new: int | None = None
            if field.is_pointer and value:
                new = moved(value)
            elif foreign is not None and field.name == foreign[0]:
                new = foreign[1]()
                self._extra_fds.append(new)
            elif field.name in FD_FIELDS and value in fds:
                new = self._fd_for(fds[value])
            elif field.name in TIMEOUT_FIELDS and 0 < value < INT64_MAX:
                new = value - raw["t_ns"] + time.monotonic_ns()
            elif (spec.name, field.name) in NAMES:
                new = self.names.get(NAMES[(spec.name, field.name)], {}).get(value)
            if new is not None:
                _put(buf, field, new)
                patched.add(field.name)
        return (moved(raw["arg"]) or raw["arg"]) if spec.by_value else raw["arg"]

    def _fd_for(self, key: int | None) -> int | None:
        """Our descriptor of a shared object; for a descriptor not of the mount, one of /dev/null."""
        if key is not None:
            return self.targets.get(key)
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._extra_fds.append(fd)
        return fd

    @staticmethod
    def _buffers(raw: dict[str, Any], keep: list[ctypes.Array]) -> list[tuple[int, int, int]]:
        """(recorded start, end, our address) of a buffer per run of user memory the handler
        touched, holding what it read there."""
        reads = [(a, bytes.fromhex(d)) for a, d in raw["reads"] if d is not None]
        touched = [(a, a + len(d)) for a, d in reads] + [(a, a + len(d) // 2) for a, d in raw["writes"]]
        spans: list[list[int]] = []
        for start, end in sorted(touched):
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        regions = []
        for start, end in spans:
            buffer = ctypes.create_string_buffer(end - start)
            for address, data in reads:
                if start <= address < end:
                    ctypes.memmove(ctypes.addressof(buffer) + address - start, data, len(data))
            keep.append(buffer)
            regions.append((start, end, ctypes.addressof(buffer)))
        return regions

    def _load_stream(self, fd: int, buf: bytearray, stream: bytes) -> None:
        """Put the recorded command stream into the BO SUBMIT reads it from (through this
        file's mapping, flushed by BO_FINI): the client wrote it there through a mapping."""
        submit = defs.drm_emudev_submit.from_bytes(bytes(buf))
        info = defs.drm_emudev_bo_info(handle=submit.cmd_handle)
        try:
            fcntl.ioctl(fd, defs.IOCTLS_BY_NAME["DRM_IOCTL_EMUDEV_BO_INFO"].cmd, info, True)
        except OSError:
            return  # the SUBMIT fails the same way without it
        if not info.mmap_offset or submit.cmd_offset + len(stream) > info.size:
            return
        with mmap.mmap(fd, info.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=info.mmap_offset) as view:
            view[submit.cmd_offset: submit.cmd_offset + len(stream)] = stream
        fcntl.ioctl(fd, defs.IOCTLS_BY_NAME["DRM_IOCTL_EMUDEV_BO_FINI"].cmd,
                    defs.drm_emudev_bo_fini(handle=submit.cmd_handle), True)

    def _compare(self, index: int, event: dict[str, Any], spec: IoctlSpec, recorded_out: bytes, out: bytes,
                 patched: set[str]) -> Divergence | None:
        """The first out field that differs, tickets and device-wide names through the maps, and
        times and offsets only as zero or not."""
        recorded = spec.struct.from_bytes(recorded_out)
        replayed = spec.struct.from_bytes(out[: len(recorded_out)])
        tickets = {ticket for ticket, _ in event["raw"]["tickets"]}
        for field in spec.struct._specs_:
            if field.direction == "in" or field.offset + field.size > len(recorded_out) or field.is_pointer:
                continue
            if field.name in patched:
                continue  # our own buffer, descriptor or clock
            a, b = _field(recorded, field), _field(replayed, field)
            if isinstance(a, int) and a in tickets:
                self.tickets[a] = b
                same = b <= defs.DRM_EMUDEV_FD_TICKET_MAX
            elif (spec.name, field.name) in NAMES:
                self.names.setdefault(NAMES[(spec.name, field.name)], {})[a] = b
                same = (a == 0) == (b == 0)
            elif ({(None, field.name), (spec.name, field.name)} & VOLATILE_FIELDS
                  or (field.direction == "out" and field.name.endswith(VOLATILE_SUFFIXES))):
                same = (a == 0) == (b == 0)
            else:
                same = a == b
            if not same:
                shown = [str(render(field, getattr(v, field.name), spec.name)) for v in (recorded, replayed)]
                return Divergence(index, event["seq"], spec.name, f"out field {field.name}", *shown)
        return None
