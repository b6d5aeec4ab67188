"""`emudev trace | record | replay`: watching a mount's clients, recording one, replaying it.

All three read MOUNT/debug/trace, which switches tracing on while it is open.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from emudev.cli import CliError, read_daemon_info
from emudev.trace.text import Filter, render

READ_SIZE = 1 << 20
TICK_S = 0.1
# How long `record` waits, once its process is gone, for the releases of the files it held.
DRAIN_S = 2.0
RECORDING_FORMAT = "emudev-recording/1"


def add_commands(sub: Any) -> None:
    t = sub.add_parser("trace", help="print every request of every client of MOUNTPOINT as it happens")
    t.add_argument("mountpoint")
    t.add_argument("--json", action="store_true", help="one JSON object per event instead of text")
    t.add_argument("--pid", type=int, action="append", default=[], help="only this process (repeatable)")
    t.add_argument("--client", type=int, action="append", default=[], metavar="ID",
                   help="only this DRM client: the id column of debug/accelN/clients (repeatable)")
    t.add_argument("--ioctl", nargs="+", action="extend", default=[], metavar="NAME",
                   help="only these ioctls, by name or its end (SUBMIT, SYNCOBJ_WAIT, DMA_BUF_IOCTL_SYNC)")
    t.add_argument("--errors-only", action="store_true", help="only requests that failed")
    t.set_defaults(func=cmd_trace)
    r = sub.add_parser("record", help="record one client's requests for emudev replay",
                       usage="emudev record MOUNTPOINT -o FILE (--pid PID | -- COMMAND [ARG...])")
    _record_options(r)
    r.add_argument("mountpoint")
    r.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_record)
    p = sub.add_parser("replay", help="replay a recording on a fresh device; report the first divergence")
    p.add_argument("recording")
    p.add_argument("--devices", dest="replay_devices", type=int, metavar="N",
                   help="devices of the fresh mount (default: as many as the recorded mount had)")
    p.set_defaults(func=cmd_replay)


def _record_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-o", "--output", metavar="FILE", help="the recording (JSON lines)")
    parser.add_argument("--pid", type=int, help="the process to record, which should not have opened a device yet")
    parser.epilog = "or -- COMMAND [ARG...]: started once tracing is on, and recorded from its start"
    return parser


@contextmanager
def _trace_file(mountpoint: str) -> Iterator[int]:
    read_daemon_info(mountpoint)  # a clear error for what is not a live emudev mount
    try:
        fd = os.open(os.path.join(mountpoint, "debug", "trace"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CliError(f"cannot open {mountpoint}/debug/trace: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def events(fd: int, tick: float | None = None) -> Iterator[dict[str, Any] | None]:
    """Events until the trace ends (unmount); with `tick`, None after each `tick` seconds without any."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    pending = b""
    while True:
        if tick is not None and not poller.poll(int(tick * 1000)):
            yield None
            continue
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (json.loads(line) for line in lines if line)


def cmd_trace(args: argparse.Namespace) -> int:
    keep = Filter(frozenset(args.pid), frozenset(args.client), tuple(args.ioctl), args.errors_only)
    try:
        with _trace_file(os.path.abspath(args.mountpoint)) as fd:
            for line in render((e for e in events(fd) if e is not None and keep(e)), args.json):
                print(line, flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `emudev trace | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Options may also follow MOUNTPOINT; everything after `--` is the command."""
    split = args.rest.index("--") if "--" in args.rest else len(args.rest)
    _record_options(argparse.ArgumentParser(prog="emudev record")).parse_args(args.rest[:split], namespace=args)
    command = args.rest[split + 1:]
    if args.output is None or (args.pid is None) == (not command):
        raise CliError("usage: emudev record MOUNTPOINT -o FILE (--pid PID | -- COMMAND [ARG...])")
    mountpoint = os.path.abspath(args.mountpoint)
    devices = len(read_daemon_info(mountpoint).get("devices", "").split()) or 1
    child: subprocess.Popen[bytes] | None = None
    with _trace_file(mountpoint) as fd, open(args.output, "w") as out:
        if command:
            child = subprocess.Popen(command)
        pid = child.pid if child is not None else args.pid
        out.write(json.dumps({"type": "recording", "format": RECORDING_FORMAT, "pid": pid, "mountpoint": mountpoint,
                              "devices": devices, "command": command}) + "\n")
        gone: Callable[[], bool] = ((lambda: child.poll() is not None) if child is not None
                                    else (lambda: not os.path.exists(f"/proc/{pid}")))
        try:
            count, lost = record(fd, out, pid, gone)
        except KeyboardInterrupt:
            count, lost = -1, 0
    if lost:
        print(f"emudev: the recording lost {lost} events (the recorder fell behind): a replay will diverge",
              file=sys.stderr)
    if count >= 0:
        print(f"emudev: recorded {count} ioctls of pid {pid} to {args.output}", file=sys.stderr)
    return child.wait() if child is not None else 0


def record(fd: int, out: IO[str], pid: int, gone: Callable[[], bool]) -> tuple[int, int]:
    """Write `pid`'s events until it is gone and its files are released; (ioctls, events lost)."""
    keep = Filter(pids=frozenset({pid}))
    held: set[int] = set()
    count = lost = 0
    gone_at: float | None = None
    for event in events(fd, TICK_S):
        if event is not None and keep(event):
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
            kind = event["type"]
            if kind == "open":
                held.add(event["fh"])
            elif kind == "release":
                held.discard(event["fh"])
            count += kind == "ioctl"
            lost += event["count"] if kind == "lost" else 0
        if gone_at is None and gone():
            gone_at = time.monotonic()
        if gone_at is not None and (not held or time.monotonic() - gone_at > DRAIN_S):
            break
    return count, lost


def cmd_replay(args: argparse.Namespace) -> int:
    from emudev.trace.replay import ReplayError, replay  # mounts through emudev.testing

    try:
        outcome = replay(args.recording, args.replay_devices)
    except (ReplayError, OSError, ValueError) as e:
        raise CliError(f"cannot replay {args.recording}: {e}") from None
    print(outcome)
    return 1 if outcome.divergence else 0
