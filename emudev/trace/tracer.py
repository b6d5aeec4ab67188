"""The tracer: what the device's hooks call while `emudev.trace.active` is set.

Hooks sit where every request of a mount passes: the DRM dispatcher and the command
table of dma-buf/sync_file/sw_sync files (ioctls), NodeFs (open, release, page reads
and writes, poll), MountServices (fd tickets issued, descriptors looked up) and
SUBMIT (the command stream it copied). They capture and hand the event to every
reader's queue and to the coverage recorder; a pump thread wakes readers that wait,
so a traced request neither formats anything for a reader nor writes its reply.
"""

from __future__ import annotations

import itertools
import select
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import emudev.trace
from emudev.drm.file import ClientIdentity
from emudev.fuse import Deferred, Request
from emudev.nodes.accel import AccelFile
from emudev.nodes.tickets import TicketDirectory
from emudev.nodes.tree import DeviceFile, OpenFile
from emudev.trace.capture import Call, Event, RecordingMemory
from emudev.trace.decode import errno_name
from emudev.uapi import defs
from emudev.uapi.types import IoctlSpec, ioc_nr, ioc_type

if TYPE_CHECKING:
    from emudev.drm.file import DrmFile
    from emudev.drm.ioctl import IoctlOutcome
    from emudev.drm.usermem import UserMemory
    from emudev.trace.coverage import CoverageRecorder
    from emudev.trace.reader import TraceReader

T = TypeVar("T")
Traced = Call | Event
_POLL_BITS = {getattr(select, name): name for name in ("POLLIN", "POLLPRI", "POLLOUT", "POLLERR", "POLLHUP")}
# How long the pump lets events gather before it answers a waiting reader.
DELIVERY_DELAY_S = 0.005
# Processes whose tgid and name are remembered; the cache is dropped when it grows past this.
_WHO_CACHE = 4096


@dataclass(frozen=True)
class _File:
    """A traced open file: what its events are labelled with, and who opened it."""

    kind: str
    label: str
    client: int | None
    pid: int
    tgid: int
    comm: str
    owner: int  # id() of the object the ioctl hooks receive (the DrmFile, or the open file itself)


def poll_names(mask: int) -> str:
    return "|".join(name for bit, name in _POLL_BITS.items() if mask & bit) or "0"


class Tracer:
    """One per daemon; `emudev.trace.active` points to it while it has readers or records coverage."""

    def __init__(self) -> None:
        self.coverage: CoverageRecorder | None = None
        self._readers: tuple[TraceReader, ...] = ()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._local = threading.local()
        self._files: dict[int, _File] = {}
        self._fh_of: dict[int, int] = {}
        self._targets: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._target_ids = itertools.count(1)
        self._who: dict[int, tuple[int, str]] = {}
        self._wake = threading.Event()
        self._pump: threading.Thread | None = None
        self._by_nr = {spec.nr: spec for spec in defs.IOCTLS if defs.FAMILIES[spec.family].dispatch == "nr"}
        self._by_cmd = {(spec.family, cmd): spec for spec in defs.IOCTLS
                        if defs.FAMILIES[spec.family].dispatch == "cmd" for cmd in spec.cmds}

    # -- switching on and off -----------------------------------------------------------------------

    def attach(self, reader: TraceReader) -> None:
        with self._lock:
            self._readers = (*self._readers, reader)
            if self._pump is None:
                self._pump = threading.Thread(target=self._deliver, name="trace-pump", daemon=True)
                self._pump.start()
        self._switch()

    def detach(self, reader: TraceReader) -> None:
        with self._lock:
            self._readers = tuple(r for r in self._readers if r is not reader)
        self._wake.set()
        self._switch()

    def record_coverage(self, recorder: CoverageRecorder) -> None:
        self.coverage = recorder
        self._switch()

    def _switch(self) -> None:
        """On while anyone listens; switching off forgets the files, whose releases go unseen."""
        with self._lock:
            on = bool(self._readers) or self.coverage is not None
            if not on:
                self._files.clear()
                self._fh_of.clear()
            emudev.trace.active = self if on else None

    def describe(self) -> str:
        readers = len(self._readers)
        parts = [f"{readers} reader{'s' if readers != 1 else ''}"] if readers else []
        parts += [f"coverage to {self.coverage.path}"] if self.coverage is not None else []
        return "on (" + ", ".join(parts) + ")"

    def _deliver(self) -> None:
        """The pump: answer the readers that wait, off the traced requests' threads, a moment
        after the first event so that one reply carries many (a reply per event would cost
        the daemon a FUSE round trip per traced request)."""
        while True:
            self._wake.wait()
            time.sleep(DELIVERY_DELAY_S)
            self._wake.clear()
            with self._lock:
                readers = self._readers
                if not readers:
                    self._pump = None
                    return
            for reader in readers:
                reader.deliver()

    def _publish(self, event: Traced) -> None:
        wake = False
        for reader in self._readers:
            wake |= reader.push(event)
        if wake:
            self._wake.set()

    # -- who and what -------------------------------------------------------------------------------

    def _who_is(self, pid: int) -> tuple[int, str]:
        who = self._who.get(pid)
        if who is None:
            if len(self._who) > _WHO_CACHE:
                self._who.clear()
            identity = ClientIdentity.of(pid, 0)
            who = self._who[pid] = (identity.tgid, identity.comm)
        return who

    def target_key(self, target: object) -> int | None:
        """A number naming a shared object (dma-buf, syncobj, sync_file) for as long as it lives."""
        try:
            with self._lock:
                key = self._targets.get(target)
                if key is None:
                    key = self._targets[target] = next(self._target_ids)
        except TypeError:  # not weakly referenceable: nothing the uapi shares
            return None
        return key

    def _base(self, kind: str, pid: int, tgid: int, comm: str, fh: int | None, f: _File | None) -> dict[str, Any]:
        return {"type": kind, "seq": next(self._seq), "t": time.monotonic_ns() / 1e9, "pid": pid, "tgid": tgid,
                "comm": comm, "fh": fh, "file": f.label if f else None, "client": f.client if f else None}

    # -- ioctls --------------------------------------------------------------------------------------

    def drm_ioctl(self, run: Callable[..., IoctlOutcome], file: DrmFile, cmd: int, in_data: bytes | memoryview,
                  user: UserMemory) -> IoctlOutcome:
        """DrmDispatcher.dispatch, traced."""
        spec = self._by_nr.get(ioc_nr(cmd)) if ioc_type(cmd) == defs.DRM_IOCTL_BASE else None
        device = getattr(file.device, "name", "?")
        call = self._call(user.pid, self._fh_of.get(id(file)), f"{device}/{file.id}", file.id, spec, cmd, 0, in_data)
        return self._run(call, lambda memory: run(file, cmd, in_data, memory))

    def command_ioctl(self, run: Callable[..., IoctlOutcome], owner: object, cmd: int, arg: int,
                      in_data: bytes | memoryview, user: UserMemory) -> IoctlOutcome:
        """CommandTable.dispatch (dma-buf, sync_file, sw_sync files), traced."""
        fh = self._fh_of.get(id(owner))
        label = getattr(owner, "family", type(owner).__name__)
        call = self._call(user.pid, fh, label, None, self._by_cmd.get((label, cmd)), cmd, arg, in_data)
        return self._run(call, lambda memory: run(owner, cmd, arg, in_data, memory))

    def _call(self, pid: int, fh: int | None, label: str, client: int | None, spec: IoctlSpec | None, cmd: int,
              arg: int, in_data: bytes | memoryview) -> Call:
        tgid, comm = self._who_is(pid)
        return Call(seq=next(self._seq), t_ns=time.monotonic_ns(), pid=pid, tgid=tgid, comm=comm, fh=fh,
                    file=label, client=client, spec=spec, cmd=cmd, arg=arg, in_bytes=bytes(in_data))

    def _run(self, call: Call, run: Callable[[RecordingMemory], IoctlOutcome]) -> IoctlOutcome:
        self._local.call = call
        try:
            outcome = run(RecordingMemory(call.pid, call))
        finally:
            self._local.call = None
        later = outcome.later
        if later is None:
            self._finish(call, outcome.result, outcome.data)
        else:
            later.on_done(lambda result: self._finish(call, result, outcome.finish()))
        return outcome

    def _finish(self, call: Call, result: int, data: bytes) -> None:
        call.result, call.out_bytes, call.end_ns = result, bytes(data), time.monotonic_ns()
        if self.coverage is not None:
            self.coverage.add(call)
        self._publish(call)

    def _current(self) -> Call | None:
        return getattr(self._local, "call", None)

    def command_stream(self, stream: bytes) -> None:
        """SUBMIT copied this stream out of its BO (emudev/engine/submit.py)."""
        call = self._current()
        if call is not None:
            call.stream = stream

    def fd_issued(self, ticket: int, target: object) -> None:
        """The running ioctl returns `ticket` for a file of `target`."""
        call = self._current()
        if call is not None:
            call.tickets.append((ticket, self.target_key(target)))

    def fd_identified(self, fd: int, target: object | None) -> None:
        """The running ioctl looked up the caller's descriptor `fd`: a file of `target`, or not ours (None)."""
        call = self._current()
        if call is not None:
            call.fds.append((fd, self.target_key(target) if target is not None else None))

    # -- files ---------------------------------------------------------------------------------------

    def file_opened(self, req: Request, node: DeviceFile, opened: OpenFile, fh: int, flags: int) -> None:
        """Opens of accel nodes, dma-buf/sync_file/syncobj tickets and sw_sync; debug files are not traced."""
        owner: object = opened
        client = None
        if isinstance(opened, AccelFile):
            kind, owner, client = "accel", opened.file, opened.file.id
            label = f"{getattr(opened.file.device, 'name', '?')}/{client}"
        elif (family := getattr(opened, "family", None)) is not None:
            kind = label = family
        elif node.target is not None:
            kind = label = type(node.target).__name__.lower()
        else:
            return
        tgid, comm = self._who_is(req.pid)
        f = self._files[fh] = _File(kind, label, client, req.pid, tgid, comm, id(owner))
        self._fh_of[id(owner)] = fh
        fields = self._base("open", req.pid, tgid, comm, fh, f)
        fields.update(kind=kind, flags=flags)
        if isinstance(node.parent, TicketDirectory):
            fields.update(ticket=-int(node.name), target=self.target_key(node.target))
        self._publish(Event(tgid, fields))

    def file_released(self, fh: int) -> None:
        f = self._files.pop(fh, None)
        if f is None:
            return
        self._fh_of.pop(f.owner, None)
        fields = self._base("release", f.pid, f.tgid, f.comm, fh, f)
        fields["kind"] = f.kind
        self._publish(Event(f.tgid, fields))

    def page_io(self, kind: str, req: Request, fh: int, offset: int, size: int, run: Callable[[], T]) -> T:
        """A read or write of a device fd: a page fault or write-back of a mapping (``page_cache``), or a
        read(2)/write(2) of the caller, which may block (``blocked``); offset, size, errno, duration."""
        f = self._files.get(fh)
        if f is None or f.kind != "accel":
            return run()
        start = time.monotonic_ns()
        error = 0
        result: T | None = None
        try:
            result = run()
            return result
        except OSError as e:
            error = e.errno or 0
            raise
        finally:
            tgid, comm = self._who_is(req.pid)
            fields = self._base(kind, req.pid, tgid, comm, fh, f)
            fields.update(offset=offset, size=size, result=-error, errno=errno_name(-error),
                          us=round((time.monotonic_ns() - start) / 1000, 1), page_cache=req.page_cache)
            if isinstance(result, Deferred):
                fields["blocked"] = True
            self._publish(Event(tgid, fields))

    def polled(self, req: Request, fh: int, events: int, revents: int) -> None:
        f = self._files.get(fh)
        if f is None:
            return
        tgid, comm = self._who_is(req.pid)
        fields = self._base("poll", req.pid, tgid, comm, fh, f)
        fields.update(kind=f.kind, events=poll_names(events), revents=poll_names(revents))
        self._publish(Event(tgid, fields))
