"""`emudev trace` and MOUNT/debug/trace: decoded requests, filters, readers, and no cost when off.

Readers are `emudev trace` processes (or this process reading debug/trace itself, which it
never sees its own requests in); the client is this process or a child. Each test ends its
requests with a sentinel, GET_PARAM of an unknown parameter (EINVAL), and waits until every
reader has seen it: events reach readers in order, so everything before it has arrived.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import emudev.trace
from emudev.driver.drv import create_devices, create_dispatcher
from emudev.drm.device import DeviceConfig
from emudev.drm.file import ClientIdentity
from emudev.drm.usermem import UserMemory
from emudev.trace.reader import QUEUE_LIMIT, TraceReader
from emudev.trace.text import Filter
from emudev.trace.tracer import Tracer
from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, Syncobj, Tensor, abs_timeout, upload_stream

SENTINEL = 0xBEEF
TIMEOUT = 10.0
Event = dict[str, Any]


def sentinel(dev: Device) -> None:
    with pytest.raises(OSError):
        dev.get_param(SENTINEL)


def is_sentinel(event: Event) -> bool:
    return event.get("ioctl") == "DRM_IOCTL_EMUDEV_GET_PARAM" and event["args"]["param"] == SENTINEL


def readers(mount) -> int:
    """Readers attached to the mount's tracer, from debug/daemon's trace row."""
    row = next(line for line in mount.debug("daemon").splitlines() if line.startswith("trace:"))
    found = re.search(r"(\d+) readers?", row)
    return int(found[1]) if found else 0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class TraceProcess:
    """`emudev trace MOUNT ARGS` in a child process; a thread collects its output lines."""

    def __init__(self, mount, *args: str) -> None:
        before = readers(mount)
        self.json = "--json" in args
        self.proc = subprocess.Popen([sys.executable, "-m", "emudev", "trace", mount.mountpoint, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        wait_until(lambda: readers(mount) > before, "the reader to attach")

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[Event]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_for_sentinel(self) -> None:
        if self.json:
            wait_until(lambda: any(is_sentinel(e) for e in self.events()), "the sentinel")
        else:
            wait_until(lambda: any(f"param={SENTINEL}" in line for line in self.lines), "the sentinel")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(TIMEOUT) == 0, self.proc.stderr.read() if self.proc.stderr else ""
        self._thread.join(TIMEOUT)


@pytest.fixture
def tracing(emudev_mount) -> Iterator[Callable[..., TraceProcess]]:
    started: list[TraceProcess] = []

    def start(*args: str) -> TraceProcess:
        started.append(TraceProcess(emudev_mount, *args))
        return started[-1]

    yield start
    for reader in started:
        if reader.proc.poll() is None:
            reader.stop()


def by_name(events: list[Event], name: str) -> list[Event]:
    return [e for e in events if e.get("ioctl") == name]


def client_ids(mount) -> list[int]:
    """DRM client ids of this process's open files, in the order they were opened."""
    rows = [line.split() for line in mount.debug("accel0", "clients").splitlines()[1:]]
    return sorted(int(row[6]) for row in rows if int(row[1]) == os.getpid())


# -- off, on, off ----------------------------------------------------------------------------------


def test_tracing_off_takes_no_tracer_path(monkeypatch) -> None:
    """With nobody tracing, the dispatcher does not enter the tracer; with a reader, it does."""
    device = create_devices(1, DeviceConfig(memory_size=1 << 24))[0]
    file = device.open_file(ClientIdentity(os.getpid(), os.getpid(), 0, "pytest", cap_sys_admin=True))
    dispatcher = create_dispatcher()
    entered: list[int] = []
    original = Tracer.drm_ioctl

    def counting(self: Tracer, *args: Any) -> Any:
        entered.append(1)
        return original(self, *args)

    monkeypatch.setattr(Tracer, "drm_ioctl", counting)
    get_cap = bytes(defs.drm_get_cap(capability=defs.DRM_CAP_PRIME))
    assert emudev.trace.active is None
    assert dispatcher.dispatch(file, defs.DRM_IOCTL_GET_CAP, get_cap, UserMemory(os.getpid())).result == 0
    assert entered == []
    tracer = Tracer()
    reader = TraceReader(tracer, tgid=0, pending=None, notify_poll=None)
    try:
        assert emudev.trace.active is tracer
        assert dispatcher.dispatch(file, defs.DRM_IOCTL_GET_CAP, get_cap, UserMemory(os.getpid())).result == 0
        assert entered == [1]
        event = json.loads(reader.read(None, 0, 1 << 20))  # type: ignore[arg-type]
        assert event["ioctl"] == "DRM_IOCTL_GET_CAP"
        assert event["args"]["capability"] == "DRM_CAP_PRIME"
        assert event["out"]["value"] == defs.DRM_PRIME_CAP_IMPORT | defs.DRM_PRIME_CAP_EXPORT
    finally:
        reader.release()
    assert emudev.trace.active is None


def test_tracing_is_on_only_while_someone_reads(emudev_mount, tracing) -> None:
    assert "trace: off" in emudev_mount.debug("daemon") or "coverage" in emudev_mount.debug("daemon")
    with Device(emudev_mount.node(0)) as dev:
        dev.get_param(defs.DRM_EMUDEV_PARAM_DEVICE_INDEX)  # before anyone reads: never shown
        reader = tracing("--json")
        assert readers(emudev_mount) == 1
        dev.get_param(defs.DRM_EMUDEV_PARAM_REVISION)
        sentinel(dev)
        reader.wait_for_sentinel()
        reader.stop()
    params = [e["args"]["param"] for e in by_name(reader.events(), "DRM_IOCTL_EMUDEV_GET_PARAM")]
    assert params == ["DRM_EMUDEV_PARAM_REVISION", SENTINEL]
    wait_until(lambda: readers(emudev_mount) == 0, "the reader to go")


# -- what a trace shows ----------------------------------------------------------------------------


def _job(dev: Device) -> None:
    """A one-packet job writing a BO, waited for through its out-syncobj."""
    with Context(dev) as ctx, dev.create_bo(4096) as bo:
        one = struct.unpack("<I", struct.pack("<f", 1.0))[0]
        stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=one,
                                        dst=Tensor.of(bo, (4,), np.float32))
        cmd, size = upload_stream(dev, stream)
        with Syncobj.create(dev) as done:
            ctx.submit(cmd, size, bos=[(bo, WRITE)], signal=[(done, 0)])
            done.wait(timeout_ns=abs_timeout(5))
        cmd.close()


def test_ioctls_are_decoded_from_the_uapi(emudev_mount, tracing) -> None:
    reader = tracing("--json")
    with Device(emudev_mount.node(0)) as dev:
        bo = dev.create_bo(5000, defs.DRM_EMUDEV_BO_MAPPABLE | defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY)
        dev.get_cap(defs.DRM_CAP_SYNCOBJ)
        with Syncobj.create(dev, signaled=True) as a, Syncobj.create(dev, signaled=True) as b:
            handles = (ctypes.c_uint32 * 2)(a.handle, b.handle)
            dev.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", defs.drm_syncobj_wait(
                handles=ctypes.addressof(handles), count_handles=2, flags=defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
                timeout_nsec=abs_timeout(5)))
        with pytest.raises(OSError):
            dev.ioctl("DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=9999))
        _job(dev)
        bo.close()
        sentinel(dev)
        reader.wait_for_sentinel()
    events = reader.events()
    create = by_name(events, "DRM_IOCTL_EMUDEV_BO_CREATE")[0]
    assert create["args"] == {"size": 5000, "flags": "DRM_EMUDEV_BO_MAPPABLE|DRM_EMUDEV_BO_DEVICE_READ_ONLY"}
    assert create["out"]["size"] == 8192 and create["result"] == 0 and create["errno"] is None
    assert create["us"] > 0 and create["pid"] == os.getpid() and create["file"].startswith("accel0/")
    assert by_name(events, "DRM_IOCTL_GET_CAP")[0]["args"]["capability"] == "DRM_CAP_SYNCOBJ"
    wait = by_name(events, "DRM_IOCTL_SYNCOBJ_WAIT")[0]
    assert wait["args"]["flags"] == "DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL"
    assert wait["ptr"] == {"handles": [1, 2]}
    failed = next(e for e in by_name(events, "DRM_IOCTL_EMUDEV_BO_INFO") if e["args"]["handle"] == 9999)
    assert (failed["result"], failed["errno"]) == (-errno.ENOENT, "ENOENT")
    submit = by_name(events, "DRM_IOCTL_EMUDEV_SUBMIT")[0]
    target = by_name(events, "DRM_IOCTL_EMUDEV_BO_CREATE")[1]["out"]["handle"]
    done = by_name(events, "DRM_IOCTL_SYNCOBJ_CREATE")[-1]["out"]["handle"]
    assert submit["ptr"]["bos"] == [{"handle": target, "flags": "DRM_EMUDEV_BO_WRITE"}]
    assert submit["ptr"]["out_syncs"] == [{"handle": done, "flags": "0", "point": 0}]
    assert len(submit["packets"]) == 1 and submit["packets"][0].startswith("BDMA op=BDMA_FILL")
    assert submit["out"]["seqno"] == 1
    assert "raw" not in submit  # what only a replay needs stays in recordings


def test_text_output(emudev_mount, tracing) -> None:
    reader = tracing()
    with Device(emudev_mount.node(0)) as dev:
        with pytest.raises(OSError):
            dev.ioctl("DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=9999))
        with Syncobj.create(dev, signaled=True) as s:
            s.wait(timeout_ns=abs_timeout(5))
        os.set_blocking(dev.fd, False)
        with pytest.raises(BlockingIOError):
            os.read(dev.fd, 64)
        os.set_blocking(dev.fd, True)
        sentinel(dev)
        reader.wait_for_sentinel()
    text = "\n".join(reader.lines)
    assert re.search(r"accel0/\d+ read\(2\) offset=0x0 size=64 = -1 EAGAIN <[\d.]+us>", text), text
    assert re.search(r"accel0/\d+ DRM_IOCTL_EMUDEV_BO_INFO\{handle=9999\} = -1 ENOENT \(No such file or directory\) "
                     r"<[\d.]+us>", text), text
    assert re.search(r"DRM_IOCTL_SYNCOBJ_CREATE\{flags=DRM_SYNCOBJ_CREATE_SIGNALED\} = 0 <[\d.]+us> → \{handle=1\}",
                     text), text
    assert "    handles → [1]" in text
    assert re.search(r"open accel0/\d+ \[fh \d+\]", text), text


def test_files_pages_polls_and_dma_buf_ioctls(emudev_mount, tracing) -> None:
    reader = tracing("--json")
    with Device(emudev_mount.node(0)) as dev:
        bo = dev.create_bo(4096)
        view = mmap.mmap(dev.fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ, offset=bo.mmap_offset)
        assert view[0] == 0  # a page fault: a read of the device file
        view.close()
        os.set_blocking(dev.fd, False)
        with pytest.raises(BlockingIOError):
            os.read(dev.fd, 64)  # the caller's read(2): drm_read() with no events
        os.set_blocking(dev.fd, True)
        with bo.export() as dmabuf:
            dmabuf.sync(defs.DMA_BUF_SYNC_START | defs.DMA_BUF_SYNC_READ)
        with Syncobj.create(dev, signaled=True) as s, s.export_sync_file() as sync_file:
            assert sync_file.wait(5)
        sentinel(dev)
        reader.wait_for_sentinel()
    events = reader.events()
    kinds = {(e["type"], e.get("kind")) for e in events}
    assert {("open", "accel"), ("open", "dma_buf"), ("open", "sync_file"), ("release", "dma_buf")} <= kinds
    page = next(e for e in events if e["type"] == "read" and e["page_cache"])
    assert page["offset"] == bo.mmap_offset and page["size"] >= 4096 and page["errno"] is None
    syscall = next(e for e in events if e["type"] == "read" and not e["page_cache"])
    assert syscall["size"] == 64 and syscall["errno"] == "EAGAIN"
    sync = by_name(events, "DMA_BUF_IOCTL_SYNC")[0]
    assert sync["file"] == "dma_buf" and sync["args"]["flags"] == "DMA_BUF_SYNC_READ"
    export = by_name(events, "DRM_IOCTL_PRIME_HANDLE_TO_FD")[0]
    claim = next(e for e in events if e["type"] == "open" and e["kind"] == "dma_buf")
    assert claim["ticket"] == export["out"]["fd"] <= defs.DRM_EMUDEV_FD_TICKET_MAX
    assert any(e["type"] == "poll" and e["kind"] == "sync_file" and "POLLIN" in e["revents"] for e in events)


# -- filters ---------------------------------------------------------------------------------------


def _child_get_cap(node: str) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with Device(node) as dev:
                dev.get_cap(defs.DRM_CAP_PRIME)
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_filters(emudev_mount, tracing) -> None:
    """Every filter at once, each on its own reader: the sentinel passes them all."""
    with Device(emudev_mount.node(0)) as a, Device(emudev_mount.node(0)) as b:
        first, _ = client_ids(emudev_mount)
        filters: dict[str, tuple[tuple[str, ...], Callable[[Event], bool]]] = {
            "pid": (("--pid", str(os.getpid())), lambda e: e["tgid"] == os.getpid()),
            "client": (("--client", str(first)), lambda e: e["client"] == first),
            "ioctl": (("--ioctl", "GET_PARAM", "DRM_IOCTL_EMUDEV_BO_INFO"),
                      lambda e: e.get("ioctl") in ("DRM_IOCTL_EMUDEV_GET_PARAM", "DRM_IOCTL_EMUDEV_BO_INFO")),
            "errors": (("--errors-only",), lambda e: e.get("errno") is not None),
        }
        started = {name: tracing("--json", *args) for name, (args, _) in filters.items()}
        everything = tracing("--json")
        a.create_bo(4096)
        b.get_cap(defs.DRM_CAP_PRIME)
        with pytest.raises(OSError):
            b.ioctl("DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=9999))
        _child_get_cap(emudev_mount.node(0))
        sentinel(a)
        for reader in [*started.values(), everything]:
            reader.wait_for_sentinel()
    seen = everything.events()
    assert len({e["tgid"] for e in seen}) == 2, "the child's requests are traced too"
    for name, (_, keep) in filters.items():
        kept = started[name].events()
        assert kept == [e for e in seen if keep(e)], name
        assert any(is_sentinel(e) for e in kept), name


@pytest.mark.parametrize(("event", "keep"), [
    ({"type": "ioctl", "pid": 5, "tgid": 4, "client": 1, "ioctl": "DRM_IOCTL_EMUDEV_SUBMIT", "errno": None},
     {"pids": {4}, "clients": {1}, "ioctls": ("SUBMIT",)}),
    ({"type": "ioctl", "pid": 5, "tgid": 4, "client": 1, "ioctl": "DRM_IOCTL_EMUDEV_SUBMIT", "errno": "EINVAL"},
     {"pids": {5}, "ioctls": ("EMUDEV_SUBMIT", "BO_INFO"), "errors_only": True}),
    ({"type": "lost", "count": 3}, {"pids": {1}, "errors_only": True}),
])
def test_filter_keeps(event: Event, keep: dict[str, Any]) -> None:
    assert Filter(**{k: frozenset(v) if isinstance(v, set) else v for k, v in keep.items()})(event)


@pytest.mark.parametrize(("event", "drop"), [
    ({"type": "ioctl", "pid": 5, "tgid": 4, "client": 1, "ioctl": "DRM_IOCTL_EMUDEV_SUBMIT", "errno": None},
     {"ioctls": ("MIT",)}),
    ({"type": "open", "pid": 5, "tgid": 4, "client": 1}, {"ioctls": ("SUBMIT",)}),
    ({"type": "ioctl", "pid": 5, "tgid": 4, "client": 1, "ioctl": "X", "errno": None}, {"errors_only": True}),
    ({"type": "read", "pid": 5, "tgid": 4, "client": 2}, {"clients": {1}}),
])
def test_filter_drops(event: Event, drop: dict[str, Any]) -> None:
    assert not Filter(**{k: frozenset(v) if isinstance(v, set) else v for k, v in drop.items()})(event)


# -- readers ---------------------------------------------------------------------------------------


def _read_events(fd: int, until: Callable[[Event], bool]) -> list[Event]:
    """Events from a debug/trace descriptor until one satisfies `until`."""
    events: list[Event] = []
    pending = b""
    deadline = time.monotonic() + TIMEOUT
    while not any(until(e) for e in events):
        assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], "no event came"
        *lines, pending = (pending + os.read(fd, 1 << 20)).split(b"\n")
        events += [json.loads(line) for line in lines if line]
    return events


def test_the_reader_process_is_not_traced(emudev_mount) -> None:
    fd = os.open(os.path.join(emudev_mount.mountpoint, "debug", "trace"), os.O_RDONLY)
    try:
        with Device(emudev_mount.node(0)) as dev:
            dev.get_cap(defs.DRM_CAP_PRIME)
            _child_get_cap(emudev_mount.node(0))
            pid = os.fork()
            if pid == 0:
                try:
                    with Device(emudev_mount.node(0)) as child:
                        sentinel(child)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            events = _read_events(fd, is_sentinel)
    finally:
        os.close(fd)
    assert by_name(events, "DRM_IOCTL_GET_CAP"), "the other processes are traced"
    assert all(e["tgid"] != os.getpid() for e in events)


def test_several_readers_each_get_every_event(emudev_mount, tracing) -> None:
    first, second = tracing("--json"), tracing("--json")
    with Device(emudev_mount.node(0)) as dev:
        for _ in range(20):
            dev.get_cap(defs.DRM_CAP_PRIME)
        sentinel(dev)
        first.wait_for_sentinel()
        second.wait_for_sentinel()
    assert [e["seq"] for e in first.events()] == [e["seq"] for e in second.events()]
    assert len(by_name(first.events(), "DRM_IOCTL_GET_CAP")) == 20


def test_a_reader_that_falls_behind_loses_events_with_a_marker(emudev_mount) -> None:
    calls = QUEUE_LIMIT + 500
    fd = os.open(os.path.join(emudev_mount.mountpoint, "debug", "trace"), os.O_RDONLY)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                with Device(emudev_mount.node(0)) as dev:
                    for _ in range(calls):
                        dev.get_cap(defs.DRM_CAP_PRIME)
                    sentinel(dev)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        events = _read_events(fd, lambda e: e["type"] == "lost")
    finally:
        os.close(fd)
    lost = next(e["count"] for e in events if e["type"] == "lost")
    assert len(events) <= QUEUE_LIMIT + 1
    assert len(by_name(events, "DRM_IOCTL_GET_CAP")) + lost >= calls


def test_unplugging_ends_the_trace(emudev_mount, tracing) -> None:
    """A reader blocked in debug/trace gets end of file when the daemon unplugs: nobody waits forever."""
    reader = tracing()
    emudev_mount.proc.send_signal(signal.SIGTERM)
    assert reader.proc.wait(TIMEOUT) == 0
    assert emudev_mount.proc.wait(TIMEOUT) == 0
