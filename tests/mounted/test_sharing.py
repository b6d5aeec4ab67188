"""Sharing BOs between processes and devices through dma-bufs, and what keeps them apart.

Every process here is real: exporters and BO owners are forked children that pass
dma-buf descriptors (SCM_RIGHTS) or offsets to the test process over unix sockets and
pipes, and what the daemon holds is read from debug/accelN/gem_objects.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import random
import select
import struct
import tempfile
from collections.abc import Callable

import numpy as np
import pytest
from forking import Channel, assert_sigbus, forked, touch_in_grandchild
from gem_debug import gem_objects, idle, wait_gem

from emudev.uapi import defs
from userspace.libaccel import MAPPABLE, Device, DmaBuf, claim_fd

PAGE = mmap.PAGESIZE
EXPORT_FLAGS = defs.DRM_CLOEXEC | defs.DRM_RDWR


@pytest.fixture
def mount(emudev_mount):
    return emudev_mount


# --- processes -------------------------------------------------------------------------------


# --- the daemon's view -----------------------------------------------------------------------


def client_tgids(mount, index: int = 0) -> list[int]:
    """The tgid column of debug/accelN/clients (counted from the right: a command may hold spaces)."""
    return [int(line.split()[-7]) for line in mount.debug(f"accel{index}", "clients").splitlines()[1:]]


# --- helpers ---------------------------------------------------------------------------------


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def raw_export(dev: Device, handle: int, flags: int = EXPORT_FLAGS) -> int:
    """PRIME_HANDLE_TO_FD by hand: the value the daemon stored in the fd field (a ticket)."""
    args = defs.drm_prime_handle(handle=handle, flags=flags, fd=-1)
    fcntl.ioctl(dev.fd, defs.DRM_IOCTL_PRIME_HANDLE_TO_FD, args, True)
    return args.fd


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def ioctl_pointer(fd: int, cmd: int, address: int) -> int:
    """ioctl(fd, cmd, address) with a 64-bit pointer as the argument itself (Python 3.11's
    fcntl.ioctl takes an integer argument as a C int, too small for an address)."""
    result = _libc.ioctl(fd, cmd, address)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def ticket_path(mount, value: int) -> str:
    return os.path.join(mount.mountpoint, "fd", str(-value))


def ioctl_errno(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno


# --- sharing between processes ---------------------------------------------------------------


def test_bo_shared_over_a_unix_socket_outlives_its_exporter(mount):
    node = mount.node(0)
    size = 16 * PAGE
    original = pattern(size, 1)
    written_by_b = pattern(2 * PAGE, 2)
    expected = original[:PAGE] + written_by_b + original[3 * PAGE:]

    def exporter(chan: Channel) -> None:
        with Device(node) as dev:
            bo = dev.create_bo(size)
            view = bo.map()
            view[:] = as_array(original)
            buf = bo.export()
            chan.send(bo.size, fds=[buf.fd])
            chan.recv()  # B has written
            chan.send(bytes(view))
            chan.recv()  # B is done with A
            del view
            buf.close()
            bo.close()

    with forked(exporter) as a, Device(node) as dev:
        exported_size, fds = a.chan.recv()
        assert exported_size == size and len(fds) == 1
        dma = DmaBuf(fds[0])
        assert dma.size == size
        bo = dev.import_dmabuf(dma.fd)
        assert bo.size == size
        via_fd = dma.map()
        via_bo = bo.map()
        assert bytes(via_fd) == original
        assert bytes(via_bo) == original

        via_fd[PAGE: 3 * PAGE] = as_array(written_by_b)
        assert bytes(via_bo) == expected
        a.chan.send("written")
        seen_by_a, _ = a.chan.recv()
        assert seen_by_a == expected
        a.chan.send("bye")
        a.join()

        # A's file is released by the daemon shortly after A's exit
        state = wait_gem(mount, lambda s: s.objects == 1 and s.rows[0].handles == 1
                         and client_tgids(mount) == [os.getpid()])
        row = state.rows[0]
        assert (row.size, row.handles, row.holders) == (size, 1, {"handle": 1, "dmabuf": 1}), state.text
        assert state.used == size
        assert bytes(via_fd) == expected
        assert bytes(via_bo) == expected
        assert bo.info().size == size
        with bo.export() as again:
            assert bytes(again.map(writable=False)) == expected
        bo.prep(write=False)
        assert bytes(bo.map_device()) == expected
        bo.fini()

        del via_fd, via_bo
        dma.close()
        bo.close()
    wait_gem(mount, idle)


@pytest.mark.emudev(devices=2)
def test_bo_of_one_device_imported_into_another(mount):
    size = 8 * PAGE
    original = pattern(size, 3)
    written_by_b = pattern(PAGE, 4)
    expected = written_by_b + original[PAGE:]

    def exporter(chan: Channel) -> None:
        with Device(mount.node(0)) as dev:
            bo = dev.create_bo(size)
            view = bo.map()
            view[:] = as_array(original)
            with bo.export() as buf:
                chan.send(None, fds=[buf.fd])
            chan.recv()
            chan.send(bytes(view))
            chan.recv()
            del view
            bo.close()

    with forked(exporter) as a, Device(mount.node(1)) as dev1:
        _, (fd,) = a.chan.recv()
        with DmaBuf(fd) as dma:
            bo = dev1.import_dmabuf(dma.fd)
        assert bo.size == size
        assert bo.mmap_offset >= 1 << 32 and bo.device_va
        via_bo = bo.map()
        assert bytes(via_bo) == original
        bo.prep(write=False)
        assert bytes(bo.map_device()) == original
        bo.fini()
        on_accel1 = gem_objects(mount, 1)
        assert [(r.size, r.handles) for r in on_accel1.rows] == [(size, 1)]
        assert on_accel1.used == 0, "an import takes no memory of the importing device"
        assert gem_objects(mount, 0).used == size

        via_bo[:PAGE] = as_array(written_by_b)
        a.chan.send("written")
        seen_by_a, _ = a.chan.recv()
        assert seen_by_a == expected
        a.chan.send("bye")
        a.join()

        on_accel0 = wait_gem(mount, lambda s: s.objects == 1 and s.rows[0].handles == 0, index=0)
        assert on_accel0.used == size, "the exporter's memory stays in use while accel1 holds the import"
        assert bytes(via_bo) == expected
        del via_bo
        bo.close()
    wait_gem(mount, idle, index=1)
    wait_gem(mount, idle, index=0)


def test_reimport_gives_the_same_handle(mount):
    node = mount.node(0)
    with Device(node) as dev, Device(node) as other:
        bo = dev.create_bo(PAGE)
        with bo.export() as buf, bo.export() as second:
            assert dev.import_dmabuf(buf.fd).handle == bo.handle
            assert dev.import_dmabuf(second.fd).handle == bo.handle

            imported = other.import_dmabuf(buf.fd)
            assert other.import_dmabuf(buf.fd).handle == imported.handle
            assert other.import_dmabuf(second.fd).handle == imported.handle
            dup = os.dup(buf.fd)
            try:
                assert other.import_dmabuf(dup).handle == imported.handle
            finally:
                os.close(dup)
            assert gem_objects(mount).rows[0].handles == 2

            # one import is one handle: a single GEM_CLOSE ends it, however often it was imported
            handle = imported.handle
            imported.close()
            close = defs.drm_gem_close(handle=handle)
            assert ioctl_errno(lambda: other.ioctl("DRM_IOCTL_GEM_CLOSE", close)) == errno.EINVAL
            assert gem_objects(mount).rows[0].handles == 1
            assert other.import_dmabuf(buf.fd).handle == 1
        bo.close()
    wait_gem(mount, idle)


# --- isolation -------------------------------------------------------------------------------


def test_a_file_without_a_handle_cannot_map_another_files_bo(mount):
    node = mount.node(0)
    size = 4 * PAGE
    through_dmabuf = pattern(size, 5)
    through_device = pattern(size, 6)
    offsets_r, offsets_w = os.pipe()

    def owner(chan: Channel) -> None:
        os.close(offsets_r)
        with Device(node) as dev:
            bo = dev.create_bo(size)
            shared = bo.map()
            shared[:] = as_array(through_dmabuf)
            os.write(offsets_w, struct.pack("<QQ", bo.mmap_offset, bo.size))
            chan.recv()  # B probed the untouched device-fd range
            mine = bo.map_device()
            bo.prep()
            assert bytes(mine) == through_dmabuf
            mine[:] = as_array(through_device)
            bo.fini()
            chan.send(bytes(shared))
            chan.recv()  # B probed again
            del mine, shared
            bo.close()

    with forked(owner) as a:
        os.close(offsets_w)
        with os.fdopen(offsets_r, "rb") as f:
            a_offset, a_size = struct.unpack("<QQ", f.read(16))
        assert a_size == size
        with Device(node) as dev:
            own = dev.create_bo(size)  # B has BOs of its own, just no handle to A's
            assert own.mmap_offset != a_offset
            early = mmap.mmap(dev.fd, size, offset=a_offset)
            for position in (0, size - PAGE):
                assert_sigbus(touch_in_grandchild(early, position))
            assert_sigbus(touch_in_grandchild(early, 0, write=True))

            a.chan.send("probed")
            after_fini, _ = a.chan.recv()
            assert after_fini == through_device, "A's device-fd write reached its BO"
            late = mmap.mmap(dev.fd, size, offset=a_offset)
            for mapping in (early, late):
                for position in (0, PAGE, size - 1):
                    assert_sigbus(touch_in_grandchild(mapping, position))
                assert_sigbus(touch_in_grandchild(mapping, PAGE, write=True))
            a.chan.send("done")
            a.join()
            early.close()
            late.close()
            own.close()


def test_a_device_mapping_faults_past_the_end_of_its_bo(mount):
    size = 2 * PAGE
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(size)
        with bo.export() as buf:
            buf.map()[:] = 0x77
        neighbour = dev.create_bo(size)
        with neighbour.export() as buf:
            buf.map()[:] = 0x88
        mapping = mmap.mmap(dev.fd, size + 4 * PAGE, offset=bo.mmap_offset)
        bo.prep(write=False)
        assert mapping[:size] == b"\x77" * size
        for position in (size, size + PAGE, size + 4 * PAGE - 1):
            assert_sigbus(touch_in_grandchild(mapping, position))
        assert mapping[:size] == b"\x77" * size
        mapping.close()
        bo.close()
        neighbour.close()


def test_a_device_mapping_faults_across_the_whole_guard_after_its_bo(mount):
    """Without a mmap() call to check (FUSE sends none), a mapping longer than its BO is
    caught by the guard: the rest of the BO's 4 GiB offset slot is backed by nothing. Only a
    mapping longer than the whole slot would reach the file's next BO (never another file's)."""
    size = PAGE
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(size)
        neighbour = dev.create_bo(size)
        with neighbour.export() as buf:
            buf.map()[:] = 0x88
        gap = neighbour.mmap_offset - bo.mmap_offset
        assert gap >= 1 << 32
        mapping = mmap.mmap(dev.fd, gap, offset=bo.mmap_offset)
        try:
            for position in (size, gap // 2, gap - PAGE):
                assert_sigbus(touch_in_grandchild(mapping, position))
        finally:
            mapping.close()
            bo.close()
            neighbour.close()


# --- PRIME errors and tickets ----------------------------------------------------------------


def test_prime_errors(mount):
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(PAGE)
        for flags in (0x1, 0x4, defs.DRM_CLOEXEC | 0x1, 1 << 31):
            assert ioctl_errno(lambda f=flags: raw_export(dev, bo.handle, f)) == errno.EINVAL
        for handle in (0, bo.handle + 1, 0xFFFFFFFF):
            assert ioctl_errno(lambda h=handle: raw_export(dev, h)) == errno.ENOENT

        def fd_to_handle(fd: int) -> int:
            args = defs.drm_prime_handle(fd=fd)
            dev.ioctl("DRM_IOCTL_PRIME_FD_TO_HANDLE", args)
            return args.handle

        closed = os.open(os.devnull, os.O_RDONLY)
        os.close(closed)
        assert ioctl_errno(lambda: fd_to_handle(closed)) == errno.EBADF
        assert ioctl_errno(lambda: fd_to_handle(-1)) == errno.EBADF
        with tempfile.TemporaryFile() as regular:
            assert ioctl_errno(lambda: fd_to_handle(regular.fileno())) == errno.EINVAL
        assert ioctl_errno(lambda: fd_to_handle(dev.fd)) == errno.EINVAL
        assert gem_objects(mount).rows[0].handles == 1
        bo.close()
    wait_gem(mount, idle)


def test_export_without_rdwr_is_read_only(mount):
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(2 * PAGE)
        with bo.export() as rw:
            rw.map()[:] = 0x42
        ticket = raw_export(dev, bo.handle, defs.DRM_CLOEXEC)
        assert ticket <= defs.DRM_EMUDEV_FD_TICKET_MAX
        assert ioctl_errno(lambda: os.open(ticket_path(mount, ticket), os.O_RDWR)) == errno.EACCES
        assert ioctl_errno(lambda: os.open(ticket_path(mount, ticket), os.O_WRONLY)) == errno.EACCES
        with DmaBuf(claim_fd(dev.fd, ticket, defs.DRM_CLOEXEC)) as ro:
            assert fcntl.fcntl(ro.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            assert fcntl.fcntl(ro.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert ioctl_errno(lambda: mmap.mmap(ro.fd, ro.size, mmap.MAP_SHARED,
                                                 mmap.PROT_READ | mmap.PROT_WRITE)) == errno.EACCES
            assert bytes(ro.map(writable=False)) == b"\x42" * ro.size
            assert dev.import_dmabuf(ro.fd).handle == bo.handle
        bo.close()
    wait_gem(mount, idle)


def test_a_ticket_is_claimed_once_and_only_by_its_process(mount):
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(PAGE)
        ticket = raw_export(dev, bo.handle)
        assert ticket <= defs.DRM_EMUDEV_FD_TICKET_MAX
        path = ticket_path(mount, ticket)

        def thief(chan: Channel) -> None:
            outcomes = []
            for flags in (os.O_RDONLY, os.O_RDWR):
                try:
                    os.close(os.open(path, flags))
                    outcomes.append(0)
                except OSError as e:
                    outcomes.append(e.errno)
            chan.send(outcomes)

        with forked(thief) as child:
            outcomes, _ = child.chan.recv()
            child.join()
        assert all(code in (errno.ENOENT, errno.EACCES) for code in outcomes), outcomes

        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        with DmaBuf(fd) as buf:
            assert buf.size == PAGE
            assert dev.import_dmabuf(buf.fd).handle == bo.handle
            assert ioctl_errno(lambda: os.open(path, os.O_RDWR)) == errno.ENOENT
            assert ioctl_errno(lambda: os.open(path, os.O_RDONLY)) == errno.ENOENT
        bo.close()
    wait_gem(mount, idle)


def test_unclaimed_ticket_of_a_dead_process_frees_its_bo(mount):
    node = mount.node(0)

    def exporter(chan: Channel) -> None:
        with Device(node) as dev:
            bo = dev.create_bo(3 * PAGE)
            ticket = raw_export(dev, bo.handle)
            bo.close()
            chan.send(ticket)
            chan.recv()

    with forked(exporter) as child:
        ticket, _ = child.chan.recv()
        assert ticket <= defs.DRM_EMUDEV_FD_TICKET_MAX
        state = gem_objects(mount)
        assert [(r.size, r.handles, r.exported) for r in state.rows] == [(3 * PAGE, 0, True)], state.text
        assert ioctl_errno(lambda: os.open(ticket_path(mount, ticket), os.O_RDONLY)) in (errno.ENOENT,
                                                                                               errno.EACCES)
        child.chan.send("exit")
        child.join()
        wait_gem(mount, idle, timeout=2.0)


# --- the dma-buf file ------------------------------------------------------------------------


def test_dmabuf_file_operations(mount):
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(3 * PAGE + 1)
        with bo.export() as buf:
            assert os.lseek(buf.fd, 0, os.SEEK_END) == 4 * PAGE

            for flags in (defs.DMA_BUF_SYNC_START | defs.DMA_BUF_SYNC_READ, defs.DMA_BUF_SYNC_END |
                          defs.DMA_BUF_SYNC_READ, defs.DMA_BUF_SYNC_START | defs.DMA_BUF_SYNC_RW,
                          defs.DMA_BUF_SYNC_END | defs.DMA_BUF_SYNC_WRITE):
                buf.sync(flags)
            for flags in (0, defs.DMA_BUF_SYNC_END, 0x8 | defs.DMA_BUF_SYNC_READ, 1 << 63 | defs.DMA_BUF_SYNC_RW):
                assert ioctl_errno(lambda f=flags: buf.sync(f)) == errno.EINVAL

            longest = ctypes.create_string_buffer(b"n" * (defs.DMA_BUF_NAME_LEN - 1))
            assert ioctl_pointer(buf.fd, defs.DMA_BUF_SET_NAME_B, ctypes.addressof(longest)) == 0
            too_long = ctypes.create_string_buffer(b"n" * defs.DMA_BUF_NAME_LEN)
            assert ioctl_errno(lambda: ioctl_pointer(buf.fd, defs.DMA_BUF_SET_NAME_B,
                                                     ctypes.addressof(too_long))) == errno.EINVAL

            for unknown in (defs.DRM_IOCTL_GEM_CLOSE, (1 << 30) | (8 << 16) | (defs.DMA_BUF_BASE << 8) | 0x7F):
                assert ioctl_errno(lambda c=unknown: fcntl.ioctl(buf.fd, c, bytearray(8), True)) == errno.ENOTTY

            poller = select.poll()
            poller.register(buf.fd, select.POLLIN | select.POLLOUT)
            assert poller.poll(0) == [(buf.fd, select.POLLIN | select.POLLOUT)]
        bo.close()


def test_libaccel_names_a_dmabuf(mount):
    with Device(mount.node(0)) as dev:
        bo = dev.create_bo(PAGE)
        try:
            with bo.export() as buf:
                buf.set_name("n" * (defs.DMA_BUF_NAME_LEN - 1))
        finally:
            bo.close()


# --- BO ioctls through the node --------------------------------------------------------------


@pytest.mark.emudev(args=("--memory", "64M"))
def test_bo_create_errors_and_memory_limit(mount):
    with Device(mount.node(0)) as dev:
        def create(size: int, flags: int = MAPPABLE) -> defs.drm_emudev_bo_create:
            args = defs.drm_emudev_bo_create(size=size, flags=flags)
            dev.ioctl("DRM_IOCTL_EMUDEV_BO_CREATE", args)
            return args

        assert ioctl_errno(lambda: create(0)) == errno.EINVAL
        for flags in (0x4, 1 << 31, MAPPABLE | 0x100):
            assert ioctl_errno(lambda f=flags: create(PAGE, f)) == errno.EINVAL
        assert ioctl_errno(lambda: create((1 << 64) - 1)) == errno.EINVAL

        before = gem_objects(mount)
        assert (before.objects, before.used, before.capacity) == (0, 0, 64 << 20)
        assert ioctl_errno(lambda: create(128 << 20)) == errno.ENOMEM
        assert gem_objects(mount).text == before.text

        big = dev.create_bo(48 << 20)
        assert ioctl_errno(lambda: create(32 << 20)) == errno.ENOMEM
        rest = dev.create_bo(16 << 20)
        assert gem_objects(mount).used == 64 << 20
        assert ioctl_errno(lambda: create(1)) == errno.ENOMEM
        big.close()
        dev.create_bo(32 << 20).close()
        rest.close()
        assert gem_objects(mount).text == before.text


def test_bo_sizes_handles_and_info(mount):
    with Device(mount.node(0)) as dev:
        created = [dev.create_bo(size) for size in (1, PAGE, PAGE + 1)]
        assert [bo.handle for bo in created] == [1, 2, 3]
        assert [bo.size for bo in created] == [PAGE, PAGE, 2 * PAGE]
        raw = defs.drm_emudev_bo_create(size=5 * PAGE - 7, flags=MAPPABLE)
        dev.ioctl("DRM_IOCTL_EMUDEV_BO_CREATE", raw)
        assert (raw.handle, raw.size) == (4, 5 * PAGE)
        assert sorted(r.size for r in gem_objects(mount).rows) == [PAGE, PAGE, 2 * PAGE, 5 * PAGE]

        created[1].close()
        assert dev.create_bo(PAGE).handle == 2
        created[0].close()
        dev.ioctl("DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=3))
        assert [dev.create_bo(PAGE).handle for _ in range(3)] == [1, 3, 5]

        def close(handle: int) -> None:
            dev.ioctl("DRM_IOCTL_GEM_CLOSE", defs.drm_gem_close(handle=handle))

        def info(handle: int) -> defs.drm_emudev_bo_info:
            args = defs.drm_emudev_bo_info(handle=handle)
            dev.ioctl("DRM_IOCTL_EMUDEV_BO_INFO", args)
            return args

        close(4)
        for handle in (0, 4, 99):
            assert ioctl_errno(lambda h=handle: close(h)) == errno.EINVAL
            assert ioctl_errno(lambda h=handle: info(h)) == errno.ENOENT


def test_new_bo_memory_is_zero_filled(mount):
    size = 8 * PAGE
    with Device(mount.node(0)) as dev:
        first = dev.create_bo(size)
        view = first.map()
        assert not view.any()
        view[:] = 0xFF
        del view
        first.close()
        for _ in range(2):
            bo = dev.create_bo(size)
            assert not bo.map().any()
            bo.prep(write=False)
            assert not bo.map_device().any()
            bo.fini()
            bo.map()[:] = 0xAB
            bo.close()
    wait_gem(mount, idle)


def test_bo_info_offsets_and_device_addresses(mount):
    with Device(mount.node(0)) as dev:
        plain = dev.create_bo(PAGE, flags=0)
        assert (plain.mmap_offset, plain.flags) == (0, 0)
        assert plain.device_va
        read_only = dev.create_bo(PAGE, flags=defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY)
        assert (read_only.mmap_offset, read_only.flags) == (0, defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY)

        a = dev.create_bo(3 * PAGE)
        b = dev.create_bo(3 * PAGE)
        assert a.flags == b.flags == MAPPABLE
        assert min(a.mmap_offset, b.mmap_offset) >= 1 << 32
        assert abs(a.mmap_offset - b.mmap_offset) >= a.size
        vas = sorted((bo.device_va, bo.size) for bo in (plain, read_only, a, b))
        assert all(start + size <= following for (start, size), (following, _) in itertools.pairwise(vas))
        assert a.info().mmap_offset == a.mmap_offset
