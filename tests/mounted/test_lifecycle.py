"""Mount, status, unmount and the daemon's end: clean unplug (ENODEV) and death (ENOTCONN)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pytest
from forking import Channel, forked

from emudev import fuse
from emudev.testing import MountedEmudev
from emudev.uapi import defs
from userspace.compiler import compile as compile_model
from userspace.demo import models
from userspace.libaccel import Device


def emudev_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emudev", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def mountpoint():
    path = tempfile.mkdtemp(prefix="emudev-cli-")
    yield path
    if fuse.is_mounted(path):
        fuse.unmount(path, lazy=True)
    os.rmdir(path)


def test_mount_status_umount_daemonised(mountpoint):
    mounted = emudev_cli("mount", mountpoint, "--devices", "2")
    assert mounted.returncode == 0, mounted.stderr
    assert os.path.exists(os.path.join(mountpoint, "accel", "accel1"))
    with Device(os.path.join(mountpoint, "accel", "accel0")) as dev:
        status = emudev_cli("status", mountpoint)
        assert status.returncode == 0, status.stderr
        fields = dict(line.strip().split(": ", 1) for line in status.stdout.splitlines())
        assert fields["devices"] == "accel0 accel1"
        assert fields["clients"] == "1"
        daemon_pid = int(fields["pid"])
        assert dev.get_cap(defs.DRM_CAP_PRIME) == 3
    unmounted = emudev_cli("umount", mountpoint)
    assert unmounted.returncode == 0, unmounted.stderr
    assert not fuse.is_mounted(mountpoint)
    _wait_gone(daemon_pid)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive")


@pytest.mark.parametrize("problem", ["missing", "file", "busy"])
def test_mount_refuses_bad_mountpoints_clearly(mountpoint, problem):
    target = mountpoint
    if problem == "missing":
        target = os.path.join(mountpoint, "nope")
    elif problem == "file":
        target = os.path.join(mountpoint, "plain-file")
        open(target, "w").close()
    else:
        assert emudev_cli("mount", mountpoint).returncode == 0
    try:
        result = emudev_cli("mount", target)
        assert result.returncode != 0
        expected = {"missing": "does not exist", "file": "not a directory", "busy": "busy"}[problem]
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        if problem == "file":
            os.unlink(target)
        if problem == "busy":
            assert emudev_cli("umount", mountpoint).returncode == 0


def test_status_and_umount_of_nothing_fail_clearly(mountpoint):
    for command in ("status", "umount"):
        result = emudev_cli(command, mountpoint)
        assert result.returncode == 1
        assert "nothing is mounted" in result.stderr


def test_sigterm_unplugs_open_files_get_enodev_then_daemon_exits():
    with MountedEmudev() as m:
        dev = Device(m.node(0))
        assert dev.get_cap(defs.DRM_CAP_PRIME) == 3
        m.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while fuse.is_mounted(m.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not fuse.is_mounted(m.mountpoint)
        with pytest.raises(OSError) as e:
            dev.get_cap(defs.DRM_CAP_PRIME)
        assert e.value.errno == errno.ENODEV
        assert m.proc.poll() is None, "the daemon must serve open files until they are closed"
        dev.close()
        assert m.proc.wait(10) == 0


def test_sigterm_ends_a_blocked_read_with_enodev():
    """drm_read() sleeps while there are no events; unplugging must not leave the reader asleep."""
    with MountedEmudev() as m:
        def reader(chan: Channel) -> None:
            with Device(m.node(0)) as d:
                chan.send("ready")
                try:
                    os.read(d.fd, 4096)
                    outcome = 0
                except OSError as e:
                    outcome = e.errno
                chan.send(outcome)

        with forked(reader) as child:
            assert child.chan.recv()[0] == "ready"
            time.sleep(0.3)  # the read is parked in the daemon by now; if not, it ends the same way
            m.proc.send_signal(signal.SIGTERM)
            assert child.chan.recv()[0] == errno.ENODEV
            child.join()
        assert m.proc.wait(10) == 0


def test_killed_daemon_gives_enotconn_never_a_hang():
    with MountedEmudev() as m:
        dev = Device(m.node(0))
        m.proc.kill()
        m.proc.wait(10)
        with pytest.raises(OSError) as e:
            dev.get_cap(defs.DRM_CAP_PRIME)
        assert e.value.errno == errno.ENOTCONN
        dev.close()
    assert not fuse.is_mounted(m.mountpoint)


def test_stale_mount_is_reported_and_cleaned_by_umount(mountpoint):
    assert emudev_cli("mount", mountpoint).returncode == 0
    pid = int(dict(line.strip().split(": ", 1)
                   for line in emudev_cli("status", mountpoint).stdout.splitlines())["pid"])
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    status = emudev_cli("status", mountpoint)
    assert status.returncode == 1 and "gone" in status.stderr
    assert emudev_cli("umount", mountpoint).returncode == 0
    assert not fuse.is_mounted(mountpoint)


_UNPRIVILEGED_SESSION = """
import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
from emudev.cli import main
from userspace.libaccel import Device
mnt = sys.argv[1]
if main(["mount", mnt]) != 0:
    sys.exit(10)
try:
    with Device(os.path.join(mnt, "accel", "accel0")) as dev:
        sys.exit(0 if dev.get_cap(5) == 3 else 11)
finally:
    main(["umount", mnt])
"""


def test_unprivileged_mount_through_fusermount3(mountpoint):
    fuse_mode = os.stat("/dev/fuse").st_mode & 0o777
    if fuse_mode & 0o006 != 0o006:
        pytest.skip(f"/dev/fuse is mode {fuse_mode:o} on this machine: only root can open it, "
                    "so an ordinary user cannot mount through fusermount3 here")
    if os.geteuid() != 0:
        pytest.skip("the test drops from root to uid 65534 to act as an ordinary user")
    os.chmod(mountpoint, 0o777)
    result = subprocess.run([sys.executable, "-c", _UNPRIVILEGED_SESSION, mountpoint],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not fuse.is_mounted(mountpoint)


def test_daemon_stops_using_the_cpu_once_its_jobs_are_done(emudev_mount):
    """After a job's fence has signalled, no thread of the daemon keeps spinning (OpenBLAS's would, for
    about 0.1 s after every product by default), which would take the CPUs from its clients and from
    everything else on the machine."""
    daemon = psutil.Process(emudev_mount.pid)
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    with Device(emudev_mount.node(0)) as dev:
        model = compile_model(models.mlp(batch=256, features=1024, hidden=(1024, 1024)), dev)
        try:
            for _ in range(3):
                model.run(x)
            times = daemon.cpu_times()
            time.sleep(0.3)
            after = daemon.cpu_times()
        finally:
            model.close()
    used = (after.user + after.system) - (times.user + times.system)
    assert used < 0.05, f"the idle daemon used {used * 1000:.0f} ms of CPU in 300 ms"
