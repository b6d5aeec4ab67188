"""Mounted devices for tests: a daemon in its own process, always unmounted afterwards.

Use it from any pytest suite with `-p emudev.testing` (or `pytest_plugins =
["emudev.testing"]` in a conftest.py); the fixtures are `emudev_mount` (a fresh
daemon per test) and `emudev_shared_mount` (one daemon per session). Outside pytest,
`with MountedEmudev(devices=2) as m: ...` does the same.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from emudev import fuse

START_TIMEOUT = 20.0
READY_LINE = "emudev.daemon INFO serving "
STOP_TIMEOUT = 10.0
COVERAGE_ENV = "EMUDEV_COVERAGE"


class DaemonStartError(RuntimeError):
    pass


def _coverage_args() -> list[str]:
    """With EMUDEV_COVERAGE=DIR, every daemon writes the uapi its clients used into a file of
    its own in DIR, for the coverage gate (make uapi-coverage)."""
    directory = os.environ.get(COVERAGE_ENV)
    if not directory:
        return []
    os.makedirs(directory, exist_ok=True)
    return ["--coverage", os.path.abspath(directory)]


class MountedEmudev:
    """Start `emudev mount --foreground` in a child process on a temporary mountpoint."""

    def __init__(self, devices: int = 1, extra_args: tuple[str, ...] = (), mountpoint: str | None = None,
                 check: bool = True) -> None:
        """`check` runs the daemon with its checkers (always on in tests; benchmarks turn them off)."""
        self.devices = devices
        self.check = check
        self.extra_args = extra_args
        self._own_dir = mountpoint is None
        self.mountpoint = mountpoint or tempfile.mkdtemp(prefix="emudev-mnt-")
        # A file of its own: a name built from id(self) came back once the object it named was freed,
        # and the next mount then read an earlier daemon's findings as its own.
        fd, self.log_path = tempfile.mkstemp(prefix=f"emudev-test-{os.getpid()}-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen[bytes] | None = None

    def node(self, index: int = 0) -> str:
        return os.path.join(self.mountpoint, "accel", f"accel{index}")

    def debug(self, *parts: str) -> str:
        with open(os.path.join(self.mountpoint, "debug", *parts)) as f:
            return f.read()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def violations(self) -> str:
        """What the checkers found (debug/checks before its notes; the log once the mount is
        gone); empty when all is well."""
        if not self.check:
            return ""
        try:
            head, _, _ = self.debug("checks").partition("notes:")
        except OSError:
            return "\n".join(line for line in self.log_text().splitlines() if " emudev.check WARNING " in line)
        return "" if head.startswith("violations: 0") else head

    def log_text(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def start(self) -> MountedEmudev:
        cmd = [sys.executable, "-m", "emudev", "mount", self.mountpoint, "--foreground",
               *(["--check"] if self.check else []), *_coverage_args(),
               "--devices", str(self.devices), "--log", self.log_path, *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        # Ready once the daemon has logged that it serves: after its nodes appear it still
        # finishes starting up (the janitor), and a test should start from a settled daemon.
        while not os.path.exists(self.node(self.devices - 1)) or READY_LINE not in self.log_text():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.stop()
                raise DaemonStartError(f"emudev daemon exited with {self.proc.returncode}: {err}{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonStartError(f"emudev daemon did not mount within {START_TIMEOUT}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; whatever happened, leave no mount behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        if fuse.is_mounted(self.mountpoint):
            fuse.unmount(self.mountpoint, lazy=True)
        if self._own_dir:
            shutil.rmtree(self.mountpoint, ignore_errors=True)

    def __enter__(self) -> MountedEmudev:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def emudev_mount(request: pytest.FixtureRequest) -> Iterator[MountedEmudev]:
    """A fresh daemon for one test; `@pytest.mark.emudev(devices=2, args=(...))` configures it."""
    marker = request.node.get_closest_marker("emudev")
    kwargs = marker.kwargs if marker else {}
    with MountedEmudev(devices=kwargs.get("devices", 1), extra_args=tuple(kwargs.get("args", ()))) as m:
        yield m
        if not kwargs.get("violations_expected"):
            assert not m.violations(), f"the checkers found violations:\n{m.violations()}"


@pytest.fixture(scope="session")
def emudev_shared_mount() -> Iterator[MountedEmudev]:
    """One daemon with two devices shared by every test of the session that asks for it."""
    with MountedEmudev(devices=2) as m:
        yield m
        assert not m.violations(), f"the checkers found violations in the shared daemon:\n{m.violations()}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emudev(devices=1, args=(), violations_expected=False): "
                                       "configure the emudev_mount daemon")
