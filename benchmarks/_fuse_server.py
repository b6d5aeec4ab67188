"""Run a FUSE server as a child process on a temporary mountpoint, and always unmount it.

Shared by every FUSE column so that the C floor and emudev are started, pinned and torn down the
same way. The benchmark measures whatever is mounted; it must never leave a mount behind, even
when the server fails to start or the measurement raises.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """A server that could not be started; the message is reported instead of its numbers."""


@dataclass(frozen=True)
class Served:
    """A mounted server: the file to open and the process whose threads get pinned."""

    node: str
    pid: int


@contextmanager
def serve(name: str, argv: Callable[[str], list[str]], node: str) -> Iterator[Served]:
    """Start `argv(mountpoint)`, wait until MOUNTPOINT/NODE appears, and tear it all down afterwards."""
    mountpoint = tempfile.mkdtemp(prefix="emudev-bench-")
    with tempfile.TemporaryFile() as log:
        proc: subprocess.Popen[bytes] | None = None
        try:
            proc = subprocess.Popen(argv(mountpoint), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log)
            path = os.path.join(mountpoint, node)
            _wait_for(name, path, proc, log)
            yield Served(path, proc.pid)
        finally:
            if proc is not None:
                _stop(proc)
            _unmount(mountpoint)
            shutil.rmtree(mountpoint, ignore_errors=True)


def _wait_for(name: str, path: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    """The node exists only once the server answers LOOKUP, i.e. once the mount is serving."""
    deadline = time.monotonic() + START_TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with status {proc.returncode}: {_last_line(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{name} did not serve {path} within {START_TIMEOUT:.0f} s")
        time.sleep(0.01)


def _last_line(log: IO[bytes]) -> str:
    """The last line of a server's stderr, usually the exception or error that stopped it."""
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets the server unmount cleanly; SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _is_mounted(mountpoint: str) -> bool:
    """Read the mount table: stat() on a mount whose server died fails with ENOTCONN instead."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mountpoint for line in f)


def _unmount(mountpoint: str) -> None:
    """Lazy unmount, so that a file still open somewhere cannot keep the mount alive."""
    for cmd in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if not _is_mounted(mountpoint):
            return
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        except OSError:
            continue


def pin_threads(pid: int, cpus: frozenset[int]) -> None:
    """Pin every thread of PID: sched_setaffinity on a pid moves only its main thread.

    Threads a server creates later inherit the affinity of the thread that creates them, so
    pinning the current ones is enough for libfuse's on-demand workers too.
    """
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            continue
