"""accel-top: live use of the accel devices, per engine and per client, read from the mount's debug files.

Everything comes from MOUNT/debug/ (daemon, accelN/engines, accelN/clients), the same
files a person would cat, so the tool needs no side channel into the daemon and works
against any emudev that serves them. Rates (engine busy %, jobs/s, ioctls/s) are the
deltas of two samples `--interval` seconds apart; busy % of an engine is its busy_ms
delta over the interval, and a client's NPU % is the sum over engines (like top's CPU %
over cores it can pass 100 when engines overlap). The daemon counts an engine busy from
when it takes its part of a job until that part ends, SEM_WAIT included: busy means
occupied by a job, not necessarily computing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field

PROG = "accel-top"
CLEAR = "\x1b[H\x1b[2J\x1b[3J"
EXIT_OK = 0
EXIT_NO_MOUNT = 1


class TopError(Exception):
    """The mount or its debug files are missing or went away: one line to the user, exit status 1."""


# -- parsing the debug files ----------------------------------------------------------------------

@dataclass(frozen=True)
class EngineRow:
    name: str
    busy_ms: float
    packets: int
    busy_ms_by_file: dict[int, float]


@dataclass(frozen=True)
class ContextRow:
    file: int
    ctx: int
    priority: int
    queued: int
    submitted: int
    banned: bool


@dataclass(frozen=True)
class ClientRow:
    file: int
    comm: str
    tgid: int
    pid: int
    uid: int
    ioctls: int
    name: str


@dataclass
class DeviceSample:
    name: str
    time: float
    engines: list[EngineRow] = field(default_factory=list)
    contexts: list[ContextRow] = field(default_factory=list)
    clients: list[ClientRow] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    queued: int = 0
    running: str = "none"
    unplugged: bool = False


_JOBS = re.compile(r"jobs: completed (\d+), failed (\d+), queued (\d+), running (.*)")


def parse_engines(text: str, sample: DeviceSample) -> None:
    """debug/accelN/engines: engine rows, then context rows after their header, then the jobs line."""
    section = "engines"
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "engine":
            section = "engines"
        elif words[0] == "file" and "ctx" in words:
            section = "contexts"
        elif (match := _JOBS.match(line.strip())) is not None:
            sample.completed, sample.failed, sample.queued = (int(match.group(i)) for i in (1, 2, 3))
            sample.running = match.group(4)
        elif section == "engines" and len(words) >= 3:
            by_file = {}
            for pair in words[3:]:
                file, _, ms = pair.partition(":")
                by_file[int(file)] = float(ms)
            sample.engines.append(EngineRow(words[0], float(words[1]), int(words[2]), by_file))
        elif section == "contexts" and len(words) >= 6:
            sample.contexts.append(ContextRow(int(words[0]), int(words[1]), int(words[2]), int(words[3]),
                                              int(words[4]), words[5] == "yes"))


def parse_clients(text: str) -> list[ClientRow]:
    """debug/accelN/clients, read from the right: the command (comm) is the only field that may hold spaces."""
    rows = []
    for line in text.splitlines()[1:]:
        words = line.split()
        if len(words) < 8:
            continue
        comm = " ".join(words[:-7])
        tgid, pid, uid, _auth, ioctls, file, name = words[-7:]
        rows.append(ClientRow(int(file), comm, int(tgid), int(pid), int(uid), int(ioctls), name))
    return rows


def parse_daemon(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


# -- sampling -----------------------------------------------------------------------------------

def read(mount: str, *parts: str) -> str:
    path = os.path.join(mount, "debug", *parts)
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        raise TopError(f"{path}: no such file (is {mount} an emudev mount?)") from None
    except OSError as e:
        raise TopError(f"{path}: {e.strerror or e} (did the daemon exit?)") from e


def device_names(mount: str) -> list[str]:
    daemon = parse_daemon(read(mount, "daemon"))
    names = daemon.get("devices", "").split()
    return sorted(names, key=lambda n: int(n.removeprefix("accel")) if n.removeprefix("accel").isdigit() else 0)


def sample_device(mount: str, name: str) -> DeviceSample:
    sample = DeviceSample(name, time.monotonic())
    parse_engines(read(mount, name, "engines"), sample)
    sample.clients = parse_clients(read(mount, name, "clients"))
    try:
        sample.unplugged = "unplugged=yes" in read(mount, name, "name")
    except TopError:
        pass
    return sample


@dataclass
class Snapshot:
    daemon: dict[str, str]
    devices: list[DeviceSample]


def take(mount: str, only: list[str] | None) -> Snapshot:
    daemon = parse_daemon(read(mount, "daemon"))
    names = device_names(mount)
    if only:
        missing = [n for n in only if n not in names]
        if missing:
            raise TopError(f"{mount} has no {', '.join(missing)} (devices: {' '.join(names) or 'none'})")
        names = only
    return Snapshot(daemon, [sample_device(mount, n) for n in names])


# -- rendering -----------------------------------------------------------------------------------

def _rate(now: float, before: float | None, seconds: float) -> float | None:
    return None if before is None or seconds <= 0 else (now - before) / seconds


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def render_device(now: DeviceSample, before: DeviceSample | None) -> list[str]:
    """One device: the jobs line, the engine table, the client table with their contexts."""
    seconds = now.time - before.time if before else 0.0
    prev_engines = {e.name: e for e in before.engines} if before else {}
    prev_clients = {c.file: c for c in before.clients} if before else {}
    jobs_rate = _rate(now.completed, before.completed if before else None, seconds)
    lines = [f"{now.name}{'  UNPLUGGED' if now.unplugged else ''}  jobs: {now.completed} completed"
             + (f" ({jobs_rate:.1f}/s)" if jobs_rate is not None else "")
             + f", {now.failed} failed, {now.queued} queued, running {now.running}"]
    lines.append(f"  {'engine':<8}{'busy%':>7}{'busy_ms':>12}{'packets':>10}{'pkt/s':>9}")
    for engine in now.engines:
        prev = prev_engines.get(engine.name)
        busy = _rate(engine.busy_ms, prev.busy_ms if prev else None, seconds * 1e3)
        packets = _rate(engine.packets, prev.packets if prev else None, seconds)
        lines.append(f"  {engine.name:<8}{_fmt(None if busy is None else 100 * busy, '.1f', 7)}"
                     f"{engine.busy_ms:12.1f}{engine.packets:10d}{_fmt(packets, '.0f', 9)}")
    contexts: dict[int, list[ContextRow]] = {}
    for ctx in now.contexts:
        contexts.setdefault(ctx.file, []).append(ctx)
    lines.append(f"  {'file':>5} {'pid':>7} {'command':<16} {'name':<18}{'ioctls':>9}{'ioctl/s':>9}{'npu%':>7}"
                 f"{'ctx':>5}{'queued':>8}{'submitted':>10}")
    if not now.clients:
        lines.append("  (no clients)")
    for client in now.clients:
        prev = prev_clients.get(client.file)
        ioctl_rate = _rate(client.ioctls, prev.ioctls if prev else None, seconds) if prev else None
        npu = None
        if before is not None and seconds > 0:
            spent = sum(e.busy_ms_by_file.get(client.file, 0.0) - prev_engines[e.name].busy_ms_by_file.get(
                client.file, 0.0) for e in now.engines if e.name in prev_engines)
            npu = 100 * spent / (seconds * 1e3)
        ctxs = contexts.get(client.file, [])
        lines.append(f"  {client.file:>5} {client.pid:>7} {client.comm[:16]:<16} {client.name[:18]:<18}"
                     f"{client.ioctls:>9}{_fmt(ioctl_rate, '.0f', 9)}{_fmt(npu, '.1f', 7)}{len(ctxs):>5}"
                     f"{sum(c.queued for c in ctxs):>8}{sum(c.submitted for c in ctxs):>10}")
    if now.contexts:
        lines.append("  queues: " + "  ".join(
            f"file {c.file} ctx {c.ctx} prio {c.priority}: {c.queued} queued{' BANNED' if c.banned else ''}"
            for c in now.contexts))
    return lines


def render(mount: str, now: Snapshot, before: Snapshot | None, interval: float) -> str:
    d = now.daemon
    header = (f"{PROG} {mount}  daemon pid {d.get('pid', '?')}, up {d.get('uptime', '?')}, "
              f"{len(now.devices)} device(s), {d.get('clients', '?')} client(s)  "
              + (f"interval {interval:g}s  " if before else "totals since start  ")
              + time.strftime("%H:%M:%S"))
    previous = {s.name: s for s in before.devices} if before else {}
    lines = [header]
    for device in now.devices:
        lines.append("")
        lines += render_device(device, previous.get(device.name))
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG, description="Live per-engine and per-client use of emudev accel devices, from MOUNT/debug/.",
        epilog="busy% = an engine's busy time over the interval (the daemon counts an engine busy while it holds "
               "part of a job, semaphore waits included); npu% = a client's busy time summed over engines (can "
               "pass 100 when engines overlap). Exit status: 0 ok, 1 no mount or the daemon went "
               "away, 2 bad arguments.")
    p.add_argument("--mount", metavar="DIR", help="emudev mountpoint (default $EMUDEV_MOUNT)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between refreshes, and the window rates are measured over (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one snapshot (rates over one --interval; --interval 0 gives totals only) and exit")
    p.add_argument("--device", action="append", type=int, metavar="N", help="show only accelN (repeatable)")
    p.add_argument("--count", type=int, metavar="K", help="stop after K refreshes (default: until Ctrl-C)")
    args = p.parse_args(argv)
    if args.interval < 0 or (args.interval == 0 and not args.once):
        p.error("--interval must be > 0 (or 0 with --once)")
    mount = args.mount or os.environ.get("EMUDEV_MOUNT")
    if not mount:
        print(f"{PROG}: no mount given: pass --mount DIR or set EMUDEV_MOUNT (mount one with `emudev mount DIR`)",
              file=sys.stderr)
        return EXIT_NO_MOUNT
    only = [f"accel{n}" for n in args.device] if args.device else None
    try:
        return _loop(mount, only, args.interval, args.once, args.count)
    except TopError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_NO_MOUNT
    except KeyboardInterrupt:
        return EXIT_OK


def _loop(mount: str, only: list[str] | None, interval: float, once: bool, count: int | None) -> int:
    if not os.path.isdir(os.path.join(mount, "debug")):
        raise TopError(f"{mount} is not an emudev mount (no {os.path.join(mount, 'debug')}); "
                       "mount one with `emudev mount DIR`")
    before = take(mount, only)
    if once:
        if interval > 0:
            time.sleep(interval)
            print(render(mount, take(mount, only), before, interval), flush=True)
        else:
            print(render(mount, before, None, interval), flush=True)
        return EXIT_OK
    refreshes = 0
    while count is None or refreshes < count:
        time.sleep(interval)
        now = take(mount, only)
        sys.stdout.write(CLEAR + render(mount, now, before, interval) + "\n")
        sys.stdout.flush()
        before = now
        refreshes += 1
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
