"""A client killed outright (SIGKILL) leaves nothing behind in the daemon but what others still hold.

The victim is a forked process holding BOs, CPU mappings through both paths, and
dma-buf descriptors, some of them already passed to the surviving test process over
a unix socket. After the kill, debug/accel0/gem_objects must show exactly what the
survivor keeps, byte for byte intact, and the daemon must not grow.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import signal

import numpy as np
import psutil
import pytest
from forking import Channel, forked
from gem_debug import gem_objects, idle, wait_gem

from emudev.uapi import defs
from userspace.libaccel import Device, DmaBuf

PAGE = mmap.PAGESIZE
WARMUP = 3
ITERATIONS = 20
RSS_GROWTH_LIMIT = 16 << 20

# What the victim makes, by name and size in pages (sizes are distinct, so gem_objects rows tell them apart).
IMPORTED, KEPT, DROPPED, PRIVATE, PLAIN = "imported", "kept", "dropped", "private", "plain"
PLAN = {IMPORTED: 3, KEPT: 2, DROPPED: 6, PRIVATE: 5, PLAIN: 7}
SENT = (IMPORTED, KEPT, DROPPED)  # their dma-bufs go to the survivor, in this order
UNMAPPABLE_PAGES = 9


@pytest.fixture
def mount(emudev_mount):
    return emudev_mount


# --- processes -------------------------------------------------------------------------------


# --- contents --------------------------------------------------------------------------------


def contents(size: int, seed: int) -> bytes:
    """What the victim leaves in a BO: random bytes through the dma-buf, then page 0 through the device fd."""
    return random.Random(seed + 1).randbytes(PAGE) + random.Random(seed).randbytes(size)[PAGE:]


def victim(chan: Channel, node: str, seed: int) -> None:
    """Hold everything a client can hold, hand some dma-bufs to the survivor, then wait to be killed."""
    dev = Device(node)
    held: list[object] = [dev]
    sent: list[int] = []
    for index, (name, pages) in enumerate(PLAN.items()):
        size = pages * PAGE
        data = np.frombuffer(contents(size, seed + index), dtype=np.uint8)
        bo = dev.create_bo(size)
        cpu = bo.map()
        cpu[PAGE:] = data[PAGE:]
        through_device = bo.map_device()
        bo.prep()
        through_device[:PAGE] = data[:PAGE]
        bo.fini()
        held += [bo, cpu, through_device, bo.export()]  # an export that is never sent
        if name in SENT:
            buf = bo.export()
            held.append(buf)
            sent.append(buf.fd)
        if name == PRIVATE:
            through_device[PAGE:] = 0xDD  # dirty pages nobody ever writes back explicitly
    unmappable = dev.create_bo(UNMAPPABLE_PAGES * PAGE, flags=0)
    held += [unmappable, unmappable.export()]
    chan.send([PLAN[name] * PAGE for name in SENT], fds=sent)
    chan.recv()  # the kill comes first


def test_killed_client_frees_what_only_it_held(mount):
    node = mount.node(0)
    daemon = psutil.Process(mount.pid)
    survivor_sizes = sorted([PLAN[IMPORTED] * PAGE, PLAN[KEPT] * PAGE])
    baseline_rss = baseline_threads = 0
    with Device(node) as dev:
        for iteration in range(WARMUP + ITERATIONS):
            if iteration == WARMUP:
                baseline_rss, baseline_threads = daemon.memory_info().rss, daemon.num_threads()
            seed = iteration * 100
            expected = {name: contents(PLAN[name] * PAGE, seed + index) for index, name in enumerate(PLAN)}
            with forked(lambda chan, s=seed: victim(chan, node, s)) as v:
                sizes, fds = v.recv()
                assert sizes == [PLAN[name] * PAGE for name in SENT] and len(fds) == len(SENT)
                imported_fd, kept_fd, dropped_fd = fds
                imported = dev.import_dmabuf(imported_fd)
                os.close(imported_fd)
                kept = DmaBuf(kept_fd)
                kept_view = kept.map()
                os.close(dropped_fd)
                assert bytes(kept_view) == expected[KEPT]
                assert len(gem_objects(mount).sizes) == len(PLAN) + 1

                status = v.kill()
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

            state = wait_gem(mount, lambda s: s.sizes == survivor_sizes and s.used == sum(survivor_sizes))
            assert state.handles == {PLAN[IMPORTED] * PAGE: 1, PLAN[KEPT] * PAGE: 0}, state.text

            assert bytes(kept_view) == expected[KEPT]
            imported_view = imported.map()
            assert bytes(imported_view) == expected[IMPORTED]
            imported.prep(write=False)
            assert bytes(imported.map_device()) == expected[IMPORTED]
            imported.fini()
            assert bytes(kept.map(writable=False)) == expected[KEPT]

            del kept_view, imported_view
            kept.close()
            imported.close()
            wait_gem(mount, idle)

    growth = daemon.memory_info().rss - baseline_rss
    assert growth < RSS_GROWTH_LIMIT, f"daemon RSS grew by {growth >> 10} KiB over {ITERATIONS} kills"
    assert daemon.num_threads() == baseline_threads
    assert "Traceback" not in mount.log_text()


def test_client_killed_before_claiming_its_ticket_leaks_nothing(mount):
    node = mount.node(0)

    def exporter(chan: Channel) -> None:
        dev = Device(node)
        tickets = []
        for pages in (1, 4):
            bo = dev.create_bo(pages * PAGE)
            for _ in range(2):
                args = defs.drm_prime_handle(handle=bo.handle, flags=defs.DRM_CLOEXEC | defs.DRM_RDWR, fd=-1)
                fcntl.ioctl(dev.fd, defs.DRM_IOCTL_PRIME_HANDLE_TO_FD, args, True)
                tickets.append(args.fd)
        chan.send(tickets)
        chan.recv()

    with forked(exporter) as child:
        tickets, _ = child.recv()
        assert all(t <= defs.DRM_EMUDEV_FD_TICKET_MAX for t in tickets), tickets
        assert gem_objects(mount).sizes == [PAGE, 4 * PAGE]
        status = child.kill()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    wait_gem(mount, idle, timeout=3.0)
    assert "Traceback" not in mount.log_text()


def _open_create_export_close(node: str) -> None:
    with Device(node) as dev:
        bo = dev.create_bo(PAGE)
        bo.export().close()
        bo.close()


def test_opening_and_exporting_in_a_loop_does_not_grow_the_daemon(mount):
    node = mount.node(0)
    daemon = psutil.Process(mount.pid)
    for _ in range(1000):
        _open_create_export_close(node)
    wait_gem(mount, idle)
    baseline = daemon.memory_info().rss
    for _ in range(1500):
        _open_create_export_close(node)
    wait_gem(mount, idle)
    growth = daemon.memory_info().rss - baseline
    assert growth < 1 << 20, f"daemon RSS grew by {growth >> 10} KiB over 1500 open/export/close rounds"
