"""`emudev mount | status | umount`: the command line of the daemon.

Errors are sentences a user can act on and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from emudev import fuse
from emudev.driver.fault_inject import FaultInjection, InjectError
from emudev.drm.device import DEFAULT_JOB_TIMEOUT_MS, DEFAULT_MEMORY_SIZE, DeviceConfig

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class CliError(Exception):
    """A failure explained to the user; main() prints it and exits 1."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parse_size(text: str) -> int:
    """'1G', '512M', '4096' → bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        value = int(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M or 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emudev", description="Emulated DRM accel devices served over FUSE.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="start a daemon serving MOUNTPOINT/accel/accelN")
    m.add_argument("mountpoint")
    m.add_argument("--devices", type=int, default=1, help="number of accel nodes (default 1)")
    m.add_argument("--memory", type=parse_size, default=DEFAULT_MEMORY_SIZE,
                   help="device memory per device (default 1G)")
    m.add_argument("--job-timeout", type=_positive_int, default=DEFAULT_JOB_TIMEOUT_MS, metavar="MS",
                   help=f"milliseconds a job may run before the engines are reset (default {DEFAULT_JOB_TIMEOUT_MS})")
    m.add_argument("--sched-seed", type=int, metavar="N",
                   help="deterministic scheduling: engines interleaved one packet at a time by a seeded RNG")
    m.add_argument("--check", action="store_true",
                   help="run the fence-order, deadlock and race checkers; findings in MOUNT/debug/checks")
    m.add_argument("--coverage", metavar="FILE|DIR",
                   help="record the uapi the clients use into FILE, or a file of the daemon's own in DIR "
                        "(python -m emudev.uapi.coverage compares it with the uapi)")
    m.add_argument("--workers", type=int, default=fuse.DEFAULT_WORKERS,
                   help=f"FUSE request threads (default {fuse.DEFAULT_WORKERS}: waits never hold one, and more "
                        "only add wake-ups)")
    m.add_argument("--foreground", action="store_true", help="do not daemonise; log to stderr")
    m.add_argument("--log", help="daemon log file (default /tmp/emudev-<pid>.log when daemonised)")
    m.add_argument("--debug", action="store_true", help="log every open and release")
    m.add_argument("--no-passthrough", dest="passthrough", action="store_false",
                   help="map dma-bufs through the page cache even as root (the path ordinary users get)")
    m.set_defaults(func=cmd_mount)
    s = sub.add_parser("status", help="show the daemon serving MOUNTPOINT")
    s.add_argument("mountpoint")
    s.set_defaults(func=cmd_status)
    u = sub.add_parser("umount", help="unplug the devices and unmount MOUNTPOINT")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon")
    u.set_defaults(func=cmd_umount)
    i = sub.add_parser("inject", help="inject a fault into a device (see MOUNTPOINT/debug/accelN/inject)")
    i.add_argument("mountpoint")
    i.add_argument("--device", type=int, default=0, help="which accelN (default 0)")
    i.add_argument("fault", nargs="+",
                   help="alloc_fail N | hang ENGINE | slow ENGINE MS | delay_signal MS | seed N|off | unplug | clear")
    i.set_defaults(func=cmd_inject)
    e = sub.add_parser("explore", help="run COMMAND against fresh devices under many scheduling seeds")
    e.add_argument("--seeds", type=_positive_int, default=10, help="how many seeds (default 10)")
    e.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    e.add_argument("--devices", type=_positive_int, default=1)
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the client program and its arguments")
    e.set_defaults(func=cmd_explore)
    from emudev.trace.cli import add_commands  # trace, record, replay

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "devices", 1) < 1 or getattr(args, "workers", 1) < 1:
        print("emudev: --devices and --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (CliError, fuse.MountError) as e:
        print(f"emudev: {e}", file=sys.stderr)
        return 1


# mount

def _check_mountpoint(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"mountpoint {path} does not exist (create it with mkdir -p {path})")
    if not os.path.isdir(path):
        raise CliError(f"mountpoint {path} is not a directory")
    if fuse.is_mounted(path):
        raise CliError(f"mountpoint {path} is busy: something is already mounted there "
                       f"(emudev umount {path}, or umount it)")


def cmd_mount(args: argparse.Namespace) -> int:
    from emudev.daemon import Daemon, DaemonConfig

    mountpoint = os.path.abspath(args.mountpoint)
    _check_mountpoint(mountpoint)
    log_path = args.log or ("" if args.foreground else f"/tmp/emudev-{os.getpid()}.log")
    device = DeviceConfig(memory_size=args.memory, job_timeout_ms=args.job_timeout, sched_seed=args.sched_seed)
    config = DaemonConfig(mountpoint=mountpoint, devices=args.devices, workers=args.workers, device=device,
                          log_path=log_path, passthrough=args.passthrough, check=args.check,
                          coverage=os.path.abspath(args.coverage) if args.coverage else "")
    level = logging.DEBUG if args.debug else logging.INFO
    if args.foreground:
        _setup_logging(level, log_path)
        Daemon(config).run(ready=lambda: print(f"emudev: serving {args.devices} device(s) at {mountpoint}",
                                                flush=True))
        return 0
    return _daemonise(lambda ready: (_setup_logging(level, log_path), Daemon(config).run(ready)),
                      mountpoint, args.devices, log_path)


def _setup_logging(level: int, log_path: str) -> None:
    handler = logging.FileHandler(log_path) if log_path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _daemonise(run: Callable[[Callable[[], None]], object], mountpoint: str, devices: int,
               log_path: str) -> int:
    """Fork a detached daemon and return once its mount answers (or report why not)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _daemon_child(run, write_end)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if not message.startswith("ok "):
        raise CliError(message.removeprefix("error: ") or f"the daemon died during start-up; see {log_path}")
    daemon_pid = int(message.split()[1])
    node = os.path.join(mountpoint, "accel", "accel0")
    os.stat(node)
    print(f"emudev: {devices} device(s) at {mountpoint}/accel (daemon pid {daemon_pid}, log {log_path})")
    return 0


def _daemon_child(run: Callable[[Callable[[], None]], object], status_fd: int) -> None:
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    def ready() -> None:
        os.write(status_fd, f"ok {os.getpid()}\n".encode())
        os.close(status_fd)

    code = 0
    try:
        run(ready)
    except fuse.MountError as e:
        os.write(status_fd, f"error: {e}\n".encode())
        code = 1
    except BaseException as e:
        logging.getLogger("emudev.daemon").exception("daemon failed")
        try:
            os.write(status_fd, f"error: daemon failed: {e}\n".encode())
        except OSError:
            pass
        code = 1
    os._exit(code)


# status and umount

def read_daemon_info(mountpoint: str) -> dict[str, str]:
    path = os.path.join(mountpoint, "debug", "daemon")
    if not fuse.is_mounted(mountpoint):
        raise CliError(f"nothing is mounted at {mountpoint}")
    try:
        with open(path) as f:
            return dict(line.rstrip("\n").split(": ", 1) for line in f if ": " in line)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise CliError(f"the daemon behind {mountpoint} is gone (stale mount); "
                           f"run: emudev umount {mountpoint}") from None
        raise CliError(f"{mountpoint} is not an emudev mount ({e.strerror})") from None


def cmd_status(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    info = read_daemon_info(mountpoint)
    for key in ("pid", "mountpoint", "devices", "clients", "uptime", "workers", "log"):
        print(f"{key:>10}: {info.get(key, '?')}")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        info = read_daemon_info(mountpoint)
    except CliError:
        if not fuse.is_mounted(mountpoint):
            raise
        fuse.unmount(mountpoint, lazy=True)
        print(f"emudev: {mountpoint}: the daemon was gone; removed the stale mount")
        return 0
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while fuse.is_mounted(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.02)
    if fuse.is_mounted(mountpoint):
        raise CliError(f"daemon {pid} did not unmount {mountpoint} within {args.timeout:g}s")
    clients = int(info.get("clients", "0"))
    note = f"; daemon {pid} stays until its {clients} open file(s) are closed" if clients else ""
    print(f"emudev: unmounted {mountpoint}{note}")
    return 0


# fault injection and seed exploration

def cmd_inject(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    read_daemon_info(mountpoint)
    command = " ".join(args.fault)
    try:
        FaultInjection().apply(command, lambda: None)  # the device's parser, for a clear message here
    except InjectError as e:
        raise CliError(f"cannot inject {command!r}: {e}") from None
    path = os.path.join(mountpoint, "debug", f"accel{args.device}", "inject")
    try:
        fd = os.open(path, os.O_WRONLY)  # no O_TRUNC: a control file has nothing to truncate
        try:
            os.write(fd, (command + "\n").encode())
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise CliError(f"{mountpoint} has no accel{args.device}") from None
    except OSError as e:
        raise CliError(f"the device refused {command!r}: {e.strerror}") from None
    print(f"emudev: accel{args.device}: {command}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from emudev.explore import explore

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise CliError("explore needs a command to run: emudev explore --seeds N -- COMMAND ...")
    results = explore(command, range(args.first_seed, args.first_seed + args.seeds), args.devices)
    failed = [r.seed for r in results if r.failed]
    print(f"emudev: {len(results) - len(failed)} of {len(results)} seeds passed"
          + (f"; failing seeds: {' '.join(map(str, failed))}" if failed else ""))
    return 1 if failed else 0
