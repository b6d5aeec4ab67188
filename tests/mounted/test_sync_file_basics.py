"""sync_file, sw_sync and dma-buf implicit sync through the mounted node."""

from __future__ import annotations

import errno
import fcntl
import select
import threading

import pytest

from emudev.uapi import defs
from userspace.libaccel import Device, SwSyncTimeline, SyncFile, abs_timeout


@pytest.fixture
def env(emudev_shared_mount):
    """A device, a timeline, and every sync_file the timeline hands out closed at the end."""
    with Device(emudev_shared_mount.node(0)) as dev, SwSyncTimeline(emudev_shared_mount.mountpoint) as tl:
        made: list[SyncFile] = []
        fence = tl.fence

        def tracked(value: int, name: str = "sw_sync") -> SyncFile:
            made.append(fence(value, name))
            return made[-1]

        tl.fence = tracked  # type: ignore[method-assign]
        yield dev, tl
        for sync_file in made:
            sync_file.close()


def test_points_signal_in_order_and_poll_wakes(env):
    _, tl = env
    one, two = tl.fence(1), tl.fence(2)
    assert not one.wait(0) and not two.wait(0)
    threading.Timer(0.1, tl.inc).start()
    assert one.wait(5) and not two.wait(0)
    tl.inc()
    assert two.wait(0)


def test_file_info_and_merge(env):
    _, tl = env
    a, b = tl.fence(3, "a"), tl.fence(5, "b")
    name, status, fences = a.info()
    assert name.startswith("sw_sync-") and (status, [f.driver for f in fences]) == (0, ["sw_sync"])
    assert fences[0].timestamp_ns == 0
    with a.merge(b, "m") as same_timeline:
        assert same_timeline.info()[0] == "m" and len(same_timeline.info()[2]) == 1
    with SwSyncTimeline(env[0].path.rsplit("/accel/", 1)[0]) as other, other.fence(1) as c, a.merge(c) as both:
        assert len(both.info()[2]) == 2
        other.inc()
        tl.inc(3)
        assert both.wait(1) and both.info()[1] == 1
    bad = defs.sync_merge_data(fd2=-1)
    with pytest.raises(OSError) as e:
        fcntl.ioctl(a.fd, defs.SYNC_IOC_MERGE, bad, True)
    assert e.value.errno == errno.ENOENT
    flags = defs.sync_merge_data(fd2=b.fd, flags=1)
    with pytest.raises(OSError) as e:
        fcntl.ioctl(a.fd, defs.SYNC_IOC_MERGE, flags, True)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        fcntl.ioctl(a.fd, 0xC0103EFF, bytearray(16), True)
    assert e.value.errno == errno.ENOTTY


def test_closing_the_timeline_signals_what_is_left_with_enoent(emudev_shared_mount):
    with SwSyncTimeline(emudev_shared_mount.mountpoint) as tl:
        pending = tl.fence(9)
    with pending:
        assert pending.wait(1)
        assert pending.info()[1] == -errno.ENOENT


def test_implicit_fences_on_a_dmabuf(env):
    dev, tl = env
    with dev.create_bo(4096) as bo, bo.export() as buf:
        buf.import_sync_file(tl.fence(7), write=True)
        poller = select.poll()
        poller.register(buf.fd, select.POLLIN | select.POLLOUT)
        assert poller.poll(0) == []
        with pytest.raises(OSError) as e:
            bo.wait(abs_timeout(0.05))
        assert e.value.errno == errno.ETIME
        with buf.export_sync_file(write=False) as writers:
            assert not writers.wait(0)
            tl.inc(7)
            assert writers.wait(1)
        assert poller.poll(1000) == [(buf.fd, select.POLLIN | select.POLLOUT)]
        bo.wait(abs_timeout(1))
        bad = defs.dma_buf_export_sync_file(flags=0)
        with pytest.raises(OSError) as e:
            fcntl.ioctl(buf.fd, defs.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, bad, True)
        assert e.value.errno == errno.EINVAL
