"""Error paths of the uapi that no other test takes, so that the coverage gate
(`make uapi-coverage`) sees every documented (ioctl, errno) pair exercised by userspace.

Each row drives one error path through libaccel's ioctl entry point, or libc's for
DMA_BUF_SET_NAME (its argument is the pointer itself); the paths that need another
process (an unprivileged client) or another daemon (unplugged) have tests of their own.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from emudev.uapi import defs
from userspace.libaccel import Context, Device, DmaBuf, SyncFile, Syncobj
from userspace.libaccel.ioctl import drm_ioctl

# Never mapped (the first page of an address space is not), but not NULL: the daemon's read fails.
UNMAPPED = 0x8
PROT_NONE = 0
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Env:
    dev: Device
    bos: tuple[int, int]
    sync_file: SyncFile
    dmabuf: DmaBuf
    arrays: list[ctypes.Array]

    def array(self, ctype: type, *values: int) -> int:
        """The address of a C array kept alive for the test."""
        array = (ctype * max(len(values), 1))(*values)
        self.arrays.append(array)
        return ctypes.addressof(array)


@pytest.fixture
def env(emudev_shared_mount) -> Iterator[Env]:
    with Device(emudev_shared_mount.node(0)) as dev:
        a, b = dev.create_bo(4096), dev.create_bo(4096)
        with Syncobj.create(dev, signaled=True) as done, done.export_sync_file() as sync_file, a.export() as dmabuf:
            yield Env(dev, (a.handle, b.handle), sync_file, dmabuf, [])


def _set_name(fd: int, address: int) -> int:
    """DMA_BUF_SET_NAME's argument is the name's address itself: through libc's ioctl."""
    if _libc.ioctl(fd, ctypes.c_ulong(defs.DMA_BUF_SET_NAME_B), ctypes.c_void_p(address)) == 0:
        return 0
    return ctypes.get_errno()


Case = tuple[str, Callable[[Env], tuple[int, defs.UapiStruct]], int]
CASES: list[Case] = [
    ("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT",
     lambda e: (e.dev.fd, defs.drm_syncobj_timeline_wait(handles=e.array(ctypes.c_uint32, 9999), count_handles=1,
                                                         points=e.array(ctypes.c_uint64, 0))), errno.ENOENT),
    ("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL",
     lambda e: (e.dev.fd, defs.drm_syncobj_timeline_array(handles=UNMAPPED, points=UNMAPPED, count_handles=1)),
     errno.EFAULT),
    ("DRM_IOCTL_SET_CLIENT_NAME", lambda e: (e.dev.fd, defs.drm_set_client_name(name_len=4, name=UNMAPPED)),
     errno.EFAULT),
    ("DRM_IOCTL_GEM_CHANGE_HANDLE", lambda e: (e.dev.fd, defs.drm_gem_change_handle(handle=e.bos[0], new_handle=0)),
     errno.EINVAL),
    ("DRM_IOCTL_GEM_CHANGE_HANDLE",
     lambda e: (e.dev.fd, defs.drm_gem_change_handle(handle=e.bos[0], new_handle=e.bos[1])), errno.ENOSPC),
    ("DRM_IOCTL_EMUDEV_BO_PREP",
     lambda e: (e.dev.fd, defs.drm_emudev_bo_prep(handle=9999, flags=defs.DRM_EMUDEV_PREP_READ)), errno.ENOENT),
    ("SYNC_IOC_FILE_INFO",
     lambda e: (e.sync_file.fd, defs.sync_file_info(num_fences=1, sync_fence_info=UNMAPPED)), errno.EFAULT),
]


@pytest.mark.parametrize(("name", "build", "expected"), CASES, ids=[f"{n}-{errno.errorcode[x]}" for n, _, x in CASES])
def test_error_path(env: Env, name: str, build: Callable[[Env], tuple[int, defs.UapiStruct]], expected: int) -> None:
    fd, args = build(env)
    with pytest.raises(OSError) as e:
        drm_ioctl(fd, defs.IOCTLS_BY_NAME[name], args)
    assert e.value.errno == expected


def test_dmabuf_set_name_with_an_unreadable_name_is_efault(env: Env) -> None:
    """The kernel's FUSE layer reads the argument's first 8 bytes itself (EFAULT before the
    daemon if it cannot); a name running from them into an inaccessible page is the daemon's EFAULT."""
    assert _set_name(env.dmabuf.fd, UNMAPPED) == errno.EFAULT
    pages = mmap.mmap(-1, 2 * mmap.PAGESIZE)
    base = ctypes.c_char.from_buffer(pages)
    try:
        pages[mmap.PAGESIZE - 8: mmap.PAGESIZE] = b"no-nul.."
        assert _libc.mprotect(ctypes.c_void_p(ctypes.addressof(base) + mmap.PAGESIZE), mmap.PAGESIZE,
                              PROT_NONE) == 0
        assert _set_name(env.dmabuf.fd, ctypes.addressof(base) + mmap.PAGESIZE - 8) == errno.EFAULT
    finally:
        _libc.mprotect(ctypes.c_void_p(ctypes.addressof(base) + mmap.PAGESIZE), mmap.PAGESIZE,
                       mmap.PROT_READ | mmap.PROT_WRITE)
        del base
        pages.close()
    assert _set_name(env.dmabuf.fd, env.array(ctypes.c_char, *b"ok\0")) == 0


def test_transfer_waiting_for_a_fence_that_never_comes_times_out(env: Env) -> None:
    """WAIT_FOR_SUBMIT waits at most 5 s for the source point to get a fence, as the kernel does."""
    with Syncobj.create(env.dev) as src, Syncobj.create(env.dev) as dst:
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            dst.transfer_from(src, src_point=1, dst_point=1, flags=defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT)
        assert e.value.errno == errno.ETIME
        assert 4.5 < time.monotonic() - start < 10


def _as_nobody(fn: Callable[[], int]) -> int:
    """fn()'s result in a child that dropped root (uid 65534: no CAP_SYS_ADMIN, no CAP_SYS_NICE)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run an unprivileged client beside it")
@pytest.mark.parametrize(("name", "args"), [
    ("DRM_IOCTL_GEM_OPEN", defs.drm_gem_open(name=1)),
    ("DRM_IOCTL_EMUDEV_CTX_CREATE", defs.drm_emudev_ctx_create(priority=defs.DRM_EMUDEV_PRIORITY_HIGH)),
])
def test_unprivileged_client_is_refused(emudev_shared_mount, name: str, args: defs.UapiStruct) -> None:
    def attempt() -> int:
        with Device(emudev_shared_mount.node(0)) as dev:
            try:
                dev.ioctl(name, args)
            except OSError as e:
                return e.errno or 0
        return 0

    assert _as_nobody(attempt) == errno.EACCES


def test_submit_to_an_unplugged_device_is_enodev(emudev_mount) -> None:
    """The device refuses every ioctl once unplugged, before looking at the arguments."""
    with Device(emudev_mount.node(0)) as dev, Context(dev) as ctx:
        inject = os.open(os.path.join(emudev_mount.mountpoint, "debug", "accel0", "inject"), os.O_WRONLY)
        try:
            os.write(inject, b"unplug\n")
        finally:
            os.close(inject)
        with pytest.raises(OSError) as e:
            dev.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", defs.drm_emudev_submit(ctx_id=ctx.id))
        assert e.value.errno == errno.ENODEV
