"""Thousands of random commands and payloads on the node: every one gets an answer
(success or an errno), and the daemon ends as healthy as it started."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import time

import psutil

from emudev.testing import MountedEmudev
from emudev.uapi import defs
from emudev.uapi.types import IOC_READ, IOC_WRITE, ioc

ITERATIONS = 4000
# Every errno the DRM core or this driver can give for garbage; anything else is a bug.
EXPECTED = {errno.EINVAL, errno.ENOTTY, errno.EFAULT, errno.EOPNOTSUPP, errno.EACCES, errno.ENOENT, errno.EBADF,
            errno.ENOMEM, errno.ENOSPC}


def _random_command(rng: random.Random) -> tuple[int, bytearray]:
    """Mostly DRM-typed commands near real numbers, with random directions and sizes."""
    kind = rng.random()
    if kind < 0.6:
        spec = rng.choice([s for s in defs.IOCTLS if s.family in ("drm", "emudev")])
        nr, size = spec.nr, rng.choice([*spec.sizes, rng.randrange(0, 256)])
    else:
        nr, size = rng.randrange(0, 256), rng.randrange(0, 512)
    direction = rng.choice([IOC_READ | IOC_WRITE] * 6 + [IOC_READ, IOC_WRITE, 0])
    type_ = ord("d") if rng.random() < 0.9 else rng.randrange(256)
    payload = bytearray(rng.randbytes(size)) if size else bytearray()
    return ioc(direction, type_, nr, size if direction else 0), payload


def _fuzz(node: str, seed: int) -> dict[int, int]:
    rng = random.Random(seed)
    outcomes: dict[int, int] = {}
    fd = os.open(node, os.O_RDWR)
    try:
        for _ in range(ITERATIONS):
            cmd, payload = _random_command(rng)
            try:
                if payload:
                    fcntl.ioctl(fd, cmd, payload, True)
                else:
                    fcntl.ioctl(fd, cmd, 0)
                code = 0
            except OSError as e:
                code = e.errno
            outcomes[code] = outcomes.get(code, 0) + 1
    finally:
        os.close(fd)
    return outcomes


def _health(pid: int) -> tuple[int, int]:
    proc = psutil.Process(pid)
    return proc.memory_info().rss, proc.num_threads()


def test_random_ioctls_get_answers_and_leave_the_daemon_healthy():
    with MountedEmudev() as m:
        _fuzz(m.node(0), seed=1)  # warm-up: imports, caches, first allocations
        rss_before, threads_before = _health(m.pid)
        outcomes = _fuzz(m.node(0), seed=2)
        rss_after, threads_after = _health(m.pid)
        assert sum(outcomes.values()) == ITERATIONS
        assert set(outcomes) <= EXPECTED | {0}, outcomes
        assert outcomes.get(0, 0) > 0 and outcomes.get(errno.EINVAL, 0) > 0
        assert threads_after == threads_before
        assert rss_after - rss_before < 8 << 20, f"RSS grew by {(rss_after - rss_before) >> 10} KiB"
        with open(m.node(0), "rb", buffering=0) as probe:
            buf = bytearray(16)
            buf[:8] = defs.DRM_CAP_PRIME.to_bytes(8, "little")
            assert fcntl.ioctl(probe.fileno(), defs.DRM_IOCTL_GET_CAP, buf, True) == 0
        assert "Traceback" not in m.log_text()


def test_a_client_that_exits_without_closing_leaves_no_file_behind():
    with MountedEmudev() as m:
        pid = os.fork()
        if pid == 0:
            fd = os.open(m.node(0), os.O_RDWR)
            for cmd, payload in (_random_command(random.Random(3)) for _ in range(200)):
                try:
                    fcntl.ioctl(fd, cmd, payload, True) if payload else fcntl.ioctl(fd, cmd, 0)
                except OSError:
                    pass
            os._exit(0)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 5
        while m.debug("accel0", "clients").count("\n") > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m.debug("accel0", "clients").count("\n") == 1
        assert "Traceback" not in m.log_text()
