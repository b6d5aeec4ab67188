"""Random syncobj operations through the dispatcher, checked against a model of the kernel.

The model below re-states drm_syncobj.c and dma-fence-chain.c in a few lines: a
syncobj holds a fence or NULL; timeline points are dma_fence_chain nodes made by
dma_fence_chain_init() (an in-order point keeps the previous node's context, an
out-of-order one starts a new context with seqno max(prev, point)); a chain walk
skips the nodes whose own fence has signalled, as dma_fence_chain_walk() garbage
collects them; dma_fence_chain_find_seqno() and SYNCOBJ_QUERY walk the head's context.
Every ioctl's result (errno, the struct copied back, the arrays written) is compared
with the model's. Pending fences come from a "driver" that attaches them with
drm_syncobj_add_point()/drm_syncobj_replace_fence() and signals them later, as a job
submission would. Waits are polls (timeout in the past), so none ever blocks.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from emudev.driver.drv import create_devices, create_dispatcher
from emudev.drm.device import DeviceConfig
from emudev.drm.file import ClientIdentity
from emudev.drm.usermem import UserMemory
from emudev.sync.fence import DmaFence, new_context
from emudev.sync.syncobj_ioctl import release_file
from emudev.uapi import defs

ROOT = ClientIdentity(pid=os.getpid(), tgid=os.getpid(), uid=0, comm="pytest", cap_sys_admin=True)

WAIT_ALL = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
FOR_SUBMIT = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
AVAILABLE = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
DEADLINE = defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
LAST_SUBMITTED = defs.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED
SIGNALED = defs.DRM_SYNCOBJ_CREATE_SIGNALED
SIZE_SHIFT = 16
SIZE_MASK = 0x3FFF << SIZE_SHIFT
NO_INDEX = 0xFFFFFFFF


# --- the kernel, in miniature ----------------------------------------------------------------

_contexts = itertools.count(1)


class KFence:
    """A plain dma_fence: a job's fence, or a stub (already signalled)."""

    def __init__(self, signaled: bool = False) -> None:
        self.context = next(_contexts)
        self.seqno = 0
        self.signaled = signaled

    def is_signaled(self) -> bool:
        return self.signaled


class KMerged:
    """What dma_fence_unwrap_merge() makes of a fence: the pending plain fences inside it,
    signalled exactly when the fence it came from is (never a chain node)."""

    def __init__(self, source: KFence | KChain) -> None:
        self.context = next(_contexts)
        self.seqno = 0
        self.source = source

    def is_signaled(self) -> bool:
        return self.source.is_signaled()


class KChain:
    """dma_fence_chain_init(chain, prev, fence, seqno)."""

    def __init__(self, prev: Fence | None, fence: Fence, seqno: int) -> None:
        self.prev = prev
        self.fence = fence
        self.prev_seqno = 0
        if isinstance(prev, KChain) and seqno > prev.seqno:
            self.context = prev.context
            self.prev_seqno = prev.seqno
        else:
            self.context = next(_contexts)
            if isinstance(prev, KChain):
                seqno = max(prev.seqno, seqno)
        self.seqno = seqno

    def is_signaled(self) -> bool:
        """dma_fence_chain_signaled(): every node's own fence, and the plain fence at the end."""
        node: Fence | None = self
        while isinstance(node, KChain):
            if not node.fence.is_signaled():
                return False
            node = node.prev
        return node is None or node.is_signaled()


Fence = KFence | KMerged | KChain


def stub() -> KFence:
    return KFence(signaled=True)


def chain_walk(node: KChain) -> Fence | None:
    """dma_fence_chain_walk(): the next older node whose own fence is still pending."""
    prev = node.prev
    while prev is not None:
        own = prev.fence if isinstance(prev, KChain) else prev
        if not own.is_signaled():
            return prev
        prev = prev.prev if isinstance(prev, KChain) else None
    return None


def find_seqno(head: Fence, point: int) -> tuple[bool, Fence | None]:
    """dma_fence_chain_find_seqno(): (found, fence); None means signalled and collected."""
    if point == 0:
        return True, head
    if not isinstance(head, KChain) or head.seqno < point:
        return False, None
    node: Fence | None = head
    while node is not None:
        if node.context != head.context or node.prev_seqno < point:
            return True, node
        node = chain_walk(node)
    return True, None


@dataclass(eq=False)
class KEventfd:
    """A SYNCOBJ_EVENTFD registration (syncobj_eventfd_entry)."""

    fd: int
    point: int
    available: bool
    found: Fence | None = None
    dropped: bool = False
    consumed: bool = False

    def fired(self) -> bool:
        return self.found is not None and (self.available or self.found.is_signaled())


@dataclass(eq=False)
class KSyncobj:
    fence: Fence | None = None
    eventfds: list[KEventfd] = field(default_factory=list)

    def find(self, point: int) -> Fence | None:
        """drm_syncobj_find_fence() without waiting: the fence, or None if not submitted."""
        if self.fence is None:
            return None
        found, fence = find_seqno(self.fence, point)
        if not found:
            return None
        return fence if fence is not None else stub()

    def _changed(self) -> None:
        """syncobj_eventfd_entry_func() for every waiting registration."""
        for entry in list(self.eventfds):
            fence = self.find(entry.point)
            if fence is not None:
                entry.found = fence
                self.eventfds.remove(entry)

    def replace(self, fence: Fence | None) -> None:
        changed = fence is not self.fence
        self.fence = fence
        if changed:
            self._changed()

    def add_point(self, fence: Fence, point: int) -> None:
        self.fence = KChain(self.fence, fence, point)
        self._changed()

    def query(self, last_submitted: bool) -> int:
        head = self.fence
        if not isinstance(head, KChain):
            return 0
        if last_submitted:
            return head.seqno
        last = self._last_of_head_context(head)
        return last.seqno if last.is_signaled() else last.prev_seqno

    @staticmethod
    def _last_of_head_context(head: KChain) -> KChain:
        """QUERY's dma_fence_chain_for_each(): the last node of the head's context it reaches."""
        last: KChain = head
        node: Fence | None = head
        while node is not None:
            if node.context != head.context:
                break
            assert isinstance(node, KChain)
            last = node
            node = chain_walk(node)
        return last

    def query_steps_over_a_waiting_node(self) -> bool:
        """Whether QUERY's walk, collecting the nodes whose own fence has signalled, stepped
        over a node of the head's context that still waits for a pending fence further down
        (a binary fence under the timeline, or a point before an out-of-order one): there the
        answer depends on that collection (test_query_walks_as_the_chain_collects)."""
        head = self.fence
        if not isinstance(head, KChain):
            return False
        below = self._last_of_head_context(head).prev
        return isinstance(below, KChain) and below.context == head.context and not below.is_signaled()


class Blocks(Exception):
    """The kernel would sleep here (a WAIT_FOR_SUBMIT lookup that finds nothing yet)."""


class KernelModel:
    """One drm_file's syncobj idr and the ioctls on it. Each method returns the ioctl's
    result (0 or -errno) and the outputs the caller would see."""

    def __init__(self) -> None:
        self.handles: dict[int, KSyncobj] = {}

    def _lookup_all(self, handles: list[int] | None) -> list[KSyncobj]:
        if handles is None:
            raise OSError(errno.EFAULT, "")
        found = []
        for h in handles:
            if h not in self.handles:
                raise OSError(errno.ENOENT, "")
            found.append(self.handles[h])
        return found

    def create(self, flags: int) -> int:
        if flags & ~SIGNALED:
            raise OSError(errno.EINVAL, "")
        handle = next(h for h in itertools.count(1) if h not in self.handles)
        self.handles[handle] = KSyncobj(stub() if flags & SIGNALED else None)
        return handle

    def destroy(self, handle: int, pad: int) -> None:
        if pad:
            raise OSError(errno.EINVAL, "")
        syncobj = self.handles.pop(handle, None)
        if syncobj is None:
            raise OSError(errno.EINVAL, "")
        syncobj.replace(None)  # drm_syncobj_free(): registrations still waiting are dropped
        for entry in syncobj.eventfds:
            entry.dropped = True
        syncobj.eventfds.clear()

    def array_op(self, name: str, handles: list[int] | None, count: int, pad: int) -> None:
        if pad or count == 0:
            raise OSError(errno.EINVAL, "")
        for syncobj in self._lookup_all(handles):
            syncobj.replace(None if name == "reset" else stub())

    def timeline_signal(self, handles: list[int] | None, points: list[int] | None, count: int, flags: int) -> None:
        if flags or count == 0:
            raise OSError(errno.EINVAL, "")
        syncobjs = self._lookup_all(handles)
        for syncobj, point in zip(syncobjs, points or [0] * count, strict=True):
            syncobj.add_point(stub(), point)  # drm_syncobj_add_point() for every point, 0 included

    def query(self, handles: list[int] | None, count: int, flags: int) -> list[int]:
        if flags & ~LAST_SUBMITTED or count == 0:
            raise OSError(errno.EINVAL, "")
        return [s.query(bool(flags & LAST_SUBMITTED)) for s in self._lookup_all(handles)]

    def transfer(self, src: int, dst: int, src_point: int, dst_point: int, flags: int, pad: int) -> None:
        if pad:
            raise OSError(errno.EINVAL, "")
        if dst not in self.handles or src not in self.handles:
            raise OSError(errno.ENOENT, "")
        fence = self.handles[src].find(src_point)
        if fence is None:
            if flags & FOR_SUBMIT:
                raise Blocks
            raise OSError(errno.EINVAL, "")
        if dst_point:
            self.handles[dst].add_point(KMerged(fence), dst_point)
        else:
            self.handles[dst].replace(fence)

    def wait(self, handles: list[int] | None, points: list[int] | None, count: int, flags: int,
             timeline: bool) -> int:
        """A poll: returns first_signaled, or raises ETIME / the lookup errors."""
        allowed = WAIT_ALL | FOR_SUBMIT | DEADLINE | (AVAILABLE if timeline else 0)
        if flags & ~allowed:
            raise OSError(errno.EINVAL, "")
        if count == 0:
            return -1  # returns 0 before writing first_signaled
        syncobjs = self._lookup_all(handles)
        first, ready = NO_INDEX, 0
        for i, (syncobj, point) in enumerate(zip(syncobjs, points or [0] * count, strict=True)):
            fence = syncobj.find(point)
            if fence is None:
                if flags & (FOR_SUBMIT | AVAILABLE):
                    continue
                raise OSError(errno.EINVAL, "")
            if flags & AVAILABLE or fence.is_signaled():
                if ready == 0:
                    first = i
                ready += 1
        if ready == count or (ready and not flags & WAIT_ALL):
            return first
        raise OSError(errno.ETIME, "")

    def eventfd(self, handle: int, point: int, flags: int, pad: int, fd_kind: str, fd: int) -> KEventfd | None:
        if flags & ~AVAILABLE or pad:
            raise OSError(errno.EINVAL, "")
        if handle not in self.handles:
            raise OSError(errno.ENOENT, "")
        if fd_kind == "closed":
            raise OSError(errno.EBADF, "")
        if fd_kind == "devnull":
            raise OSError(errno.EINVAL, "")
        entry = KEventfd(fd, point, bool(flags & AVAILABLE))
        syncobj = self.handles[handle]
        syncobj.eventfds.append(entry)
        syncobj._changed()
        return entry


def expect(call):
    """Run a model call: (0 or -errno, value)."""
    try:
        return 0, call()
    except OSError as e:
        return -e.errno, None


# --- the emulator, in-process ----------------------------------------------------------------


def u32s(values: list[int]) -> ctypes.Array:
    return (ctypes.c_uint32 * max(len(values), 1))(*values)


def u64s(values: list[int]) -> ctypes.Array:
    return (ctypes.c_uint64 * max(len(values), 1))(*values)


def with_size(cmd: int, size: int) -> int:
    """The same ioctl number with another _IOC_SIZE (an older, shorter struct)."""
    return (cmd & ~SIZE_MASK) | (size << SIZE_SHIFT)


class Emulator:
    def __init__(self) -> None:
        self.device = create_devices(1, DeviceConfig(memory_size=1 << 20))[0]
        self.dispatcher = create_dispatcher()
        self.file = self.device.open_file(ROOT)
        self.user = UserMemory(os.getpid())

    def ioctl(self, name: str, args: defs.UapiStruct, size: int | None = None):
        """(result, the struct as copied back, the outcome)."""
        cmd = defs.IOCTLS_BY_NAME[name].cmd
        data = bytes(args)
        if size is not None:
            cmd, data = with_size(cmd, size), data[:size]
        outcome = self.dispatcher.dispatch(self.file, cmd, data, self.user)
        out = bytearray(bytes(args))
        out[: len(outcome.data)] = outcome.data
        return outcome.result, type(args).from_buffer_copy(bytes(out)), outcome

    def attach(self, handle: int, fence: DmaFence, point: int) -> None:
        """A driver's submit: drm_syncobj_add_point(), or drm_syncobj_replace_fence() for point 0."""
        syncobj = self.file.syncobjs.lookup(handle)
        if point:
            syncobj.add_point(fence, point)
        else:
            syncobj.replace(fence)

    def close(self) -> None:
        release_file(self.file)


def eventfd_value(fd: int) -> int | None:
    """The eventfd's counter (read, so reset), or None if it is zero."""
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return None


# --- the machine -----------------------------------------------------------------------------

BIG_POINTS = [1 << 32, (1 << 32) + 1, (1 << 64) - 1]
U64_MAX = (1 << 64) - 1
bad_handles = st.sampled_from([0, 77, 0xFFFFFFFF])
past_timeouts = st.sampled_from([0, 1, -1, -(1 << 63), 1_000_000])


class SyncobjMachine(RuleBasedStateMachine):
    """The emulator and the model side by side, one drm_file each."""

    def __init__(self) -> None:
        super().__init__()
        self.emu = Emulator()
        self.model = KernelModel()
        self.pending: list[tuple[DmaFence, KFence]] = []
        self.eventfds: list[KEventfd] = []
        self.own_fds: list[int] = []
        self.ever: set[int] = set()

    def teardown(self) -> None:
        self.emu.close()
        for fd in self.own_fds:
            os.close(fd)

    def handle(self, data: st.DataObject) -> int:
        """Mostly a live handle; else one destroyed, or one never made (0, garbage)."""
        live = sorted(self.model.handles)
        dead = sorted(self.ever - set(live))
        kind = data.draw(st.sampled_from(["live"] * 10 + ["dead", "bad"]))
        if kind == "live" and live:
            return data.draw(st.sampled_from(live))
        if kind == "dead" and dead:
            return data.draw(st.sampled_from(dead))
        return data.draw(bad_handles)

    def point(self, data: st.DataObject, handle: int) -> int:
        """A point for `handle`: mostly around its timeline's head (the next ones, the head, one
        before), else small or 64-bit ones."""
        syncobj = self.model.handles.get(handle)
        head = syncobj.fence.seqno if syncobj is not None and isinstance(syncobj.fence, KChain) else 0
        near = [min(head + 1, U64_MAX), min(head + 1, U64_MAX), min(head + 2, U64_MAX), max(head - 1, 0), head, 0]
        return data.draw(st.one_of(st.sampled_from(near), st.integers(0, 8), st.sampled_from(BIG_POINTS)))

    def handle_list(self, data: st.DataObject) -> tuple[list[int] | None, int]:
        """(handles, count): sometimes a NULL array, sometimes count 0."""
        handles = [self.handle(data) for _ in range(data.draw(st.integers(1, 3)))]
        shape = data.draw(st.sampled_from(["ok"] * 14 + ["null", "zero"]))
        if shape == "null":
            return None, len(handles)
        if shape == "zero":
            return handles, 0
        return handles, len(handles)

    def _array(self, handles: list[int] | None) -> tuple[int, ctypes.Array | None]:
        if handles is None:
            return 0, None
        arr = u32s(handles)
        return ctypes.addressof(arr), arr

    def check(self, what: str, got: int, want: int) -> None:
        assert got == want, f"{what}: emudev {got}, kernel {want}"

    @initialize(flags=st.lists(st.sampled_from([0, SIGNALED]), min_size=1, max_size=3))
    def some_syncobjs(self, flags: list[int]) -> None:
        for f in flags:
            self.create(f)

    @rule(flags=st.sampled_from([0, 0, SIGNALED, SIGNALED, 2, 3, 1 << 31]))
    def create(self, flags: int) -> None:
        want, handle = expect(lambda: self.model.create(flags))
        got, out, _ = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_CREATE", defs.drm_syncobj_create(flags=flags))
        self.check("CREATE", got, want)
        if want == 0:
            self.check("CREATE handle", out.handle, handle)
            self.ever.add(handle)

    @rule(data=st.data(), pad=st.sampled_from([0, 0, 0, 1]))
    def destroy(self, data: st.DataObject, pad: int) -> None:
        handle = self.handle(data)
        want, _ = expect(lambda: self.model.destroy(handle, pad))
        got, _, _ = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_DESTROY", defs.drm_syncobj_destroy(handle=handle, pad=pad))
        self.check(f"DESTROY {handle}", got, want)

    @rule(data=st.data(), name=st.sampled_from(["reset", "signal"]), pad=st.sampled_from([0, 0, 0, 2]))
    def reset_or_signal(self, data: st.DataObject, name: str, pad: int) -> None:
        handles, count = self.handle_list(data)
        address, _keep = self._array(handles)
        want, _ = expect(lambda: self.model.array_op(name, handles, count, pad))
        args = defs.drm_syncobj_array(handles=address, count_handles=count, pad=pad)
        got, out, _ = self.emu.ioctl(f"DRM_IOCTL_SYNCOBJ_{name.upper()}", args)
        self.check(f"{name} {handles}", got, want)
        assert bytes(out) == bytes(args)

    @rule(data=st.data(), flags=st.sampled_from([0, 0, 0, 0, 1, 1 << 31]), null_points=st.booleans())
    def timeline_signal(self, data: st.DataObject, flags: int, null_points: bool) -> None:
        handles, count = self.handle_list(data)
        points = None
        if not (null_points and data.draw(st.booleans())):
            points = [self.point(data, h) for h in (handles or [0] * count)][:count]
        address, _keep = self._array(handles)
        pts = u64s(points or [])
        want, _ = expect(lambda: self.model.timeline_signal(handles, points, count, flags))
        args = defs.drm_syncobj_timeline_array(handles=address, points=ctypes.addressof(pts) if points else 0,
                                               count_handles=count, flags=flags)
        got, _, _ = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", args)
        self.check(f"TIMELINE_SIGNAL {handles} {points}", got, want)

    @precondition(lambda self: self.model.handles)
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        """A job's fence attached by the driver at a point (0: the binary fence)."""
        handle = data.draw(st.sampled_from(sorted(self.model.handles)))
        point = self.point(data, handle)
        fence, kfence = DmaFence(new_context(), 1, "model", "job"), KFence()
        self.pending.append((fence, kfence))
        self.emu.attach(handle, fence, point)
        syncobj = self.model.handles[handle]
        if point:
            syncobj.add_point(kfence, point)
        else:
            syncobj.replace(kfence)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), error=st.sampled_from([0, 0, -errno.EIO, -errno.ECANCELED]))
    def complete_job(self, data: st.DataObject, error: int) -> None:
        """A job finishes (in any order: each has a context of its own), maybe with an error."""
        fence, kfence = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        fence.signal(error)
        kfence.signaled = True

    @rule(data=st.data(), flags=st.sampled_from([0, 0, 0, FOR_SUBMIT, WAIT_ALL, 0x80, 0xFFFFFFFF]),
          pad=st.sampled_from([0, 0, 0, 1]))
    def transfer(self, data: st.DataObject, flags: int, pad: int) -> None:
        src, dst = self.handle(data), self.handle(data)
        src_point, dst_point = self.point(data, src), self.point(data, dst)
        try:
            want, _ = expect(lambda: self.model.transfer(src, dst, src_point, dst_point, flags, pad))
            blocks = False
        except Blocks:
            want, blocks = 0, True
        args = defs.drm_syncobj_transfer(src_handle=src, dst_handle=dst, src_point=src_point,
                                         dst_point=dst_point, flags=flags, pad=pad)
        got, _, outcome = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_TRANSFER", args)
        what = f"TRANSFER {src}:{src_point} -> {dst}:{dst_point} flags {flags:#x}"
        assert (outcome.later is not None) == blocks, f"{what}: blocks in emudev {outcome.later is not None}"
        if blocks:
            assert outcome.later is not None and not outcome.later.finished
            outcome.later.complete(-errno.EINTR)  # the sleeping caller takes a signal
            return
        self.check(what, got, want)

    @rule(data=st.data(), flags=st.sampled_from([0, 0, LAST_SUBMITTED, LAST_SUBMITTED, 2, 1 << 31]))
    def query(self, data: st.DataObject, flags: int) -> None:
        handles, count = self.handle_list(data)
        address, _keep = self._array(handles)
        sentinel = 0xDEAD_BEEF_0000_0001
        points = u64s([sentinel] * max(count, 1))
        want, values = expect(lambda: self.model.query(handles, count, flags))
        args = defs.drm_syncobj_timeline_array(handles=address, points=ctypes.addressof(points),
                                               count_handles=count, flags=flags)
        got, _, _ = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_QUERY", args)
        self.check(f"QUERY {handles} flags {flags:#x}", got, want)
        expected = values if want == 0 else [sentinel] * count
        assert list(points[:count]) == expected, f"QUERY {handles} flags {flags:#x}"

    @rule(data=st.data(), timeline=st.booleans(), flags=st.integers(0, 15) | st.sampled_from([16, 1 << 31]),
          timeout=past_timeouts, first=st.sampled_from([0, 5, NO_INDEX]), short=st.booleans())
    def wait(self, data: st.DataObject, timeline: bool, flags: int, timeout: int, first: int, short: bool) -> None:
        handles, count = self.handle_list(data)
        address, _keep = self._array(handles)
        points = None
        if timeline and data.draw(st.integers(0, 4)):
            points = [self.point(data, h) for h in (handles or [0] * count)][:count]
        pts = u64s(points or [])
        want, first_out = expect(lambda: self.model.wait(handles, points, count, flags, timeline))
        if timeline:
            name = "DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT"
            args = defs.drm_syncobj_timeline_wait(handles=address, points=ctypes.addressof(pts) if points else 0,
                                                  timeout_nsec=timeout, count_handles=count, flags=flags,
                                                  first_signaled=first)
            size = 40 if short else None
        else:
            name = "DRM_IOCTL_SYNCOBJ_WAIT"
            args = defs.drm_syncobj_wait(handles=address, timeout_nsec=timeout, count_handles=count, flags=flags,
                                         first_signaled=first)
            size = 32 if short else None
        got, out, outcome = self.emu.ioctl(name, args, size)
        what = f"{name} {handles} points {points} flags {flags:#x}"
        assert outcome.later is None, f"{what}: a poll blocked"
        self.check(what, got, want)
        if want == 0:
            self.check(f"{what} first_signaled", out.first_signaled, first if first_out == -1 else first_out)
        if want == 0:
            out.first_signaled = args.first_signaled
        assert bytes(out) == bytes(args), f"{what}: the struct copied back differs"

    @rule(data=st.data(), flags=st.sampled_from([0, 0, AVAILABLE, AVAILABLE, WAIT_ALL, 1 << 31]),
          pad=st.sampled_from([0, 0, 0, 1]), fd_kind=st.sampled_from(["eventfd"] * 6 + ["devnull", "closed"]))
    def eventfd(self, data: st.DataObject, flags: int, pad: int, fd_kind: str) -> None:
        handle = self.handle(data)
        point = self.point(data, handle)
        if fd_kind == "eventfd":
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.own_fds.append(fd)
        elif fd_kind == "devnull":
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self.own_fds.append(fd)
        else:
            fd = data.draw(st.sampled_from([-1, 999_999]))  # no such descriptor (a freed number would be reused)
        want, entry = expect(lambda: self.model.eventfd(handle, point, flags, pad, fd_kind, fd))
        args = defs.drm_syncobj_eventfd(handle=handle, flags=flags, point=point, fd=fd, pad=pad)
        got, _, _ = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_EVENTFD", args)
        self.check(f"EVENTFD {handle}:{point} flags {flags:#x} {fd_kind}", got, want)
        if entry is not None:
            self.eventfds.append(entry)

    @invariant()
    def eventfds_count_what_the_kernel_signals(self) -> None:
        for entry in self.eventfds:
            if entry.consumed:
                continue
            value = eventfd_value(entry.fd)
            if entry.fired():
                assert value == 1, f"eventfd for point {entry.point} should count 1, has {value}"
                entry.consumed = True
            else:
                assert value is None, f"eventfd for point {entry.point} counted {value} too early"

    @invariant()
    def a_wait_on_all_of_them_answers_as_the_kernel(self) -> None:
        live = sorted(self.model.handles)
        if not live:
            return
        handles = u32s(live)
        for flags in (0, WAIT_ALL, FOR_SUBMIT, WAIT_ALL | FOR_SUBMIT):
            want, first = expect(lambda f=flags: self.model.wait(live, None, len(live), f, timeline=False))
            args = defs.drm_syncobj_wait(handles=ctypes.addressof(handles), count_handles=len(live), flags=flags,
                                         first_signaled=NO_INDEX - 1)
            got, out, _ = self.emu.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", args)
            self.check(f"WAIT {live} flags {flags:#x}", got, want)
            self.check(f"WAIT {live} flags {flags:#x} first_signaled", out.first_signaled,
                       first if want == 0 else NO_INDEX - 1)

    @invariant()
    def every_syncobj_answers_query_and_wait_as_the_kernel(self) -> None:
        for handle, syncobj in sorted(self.model.handles.items()):
            for last_submitted in (False, True):
                points = u64s([0])
                handles = u32s([handle])
                args = defs.drm_syncobj_timeline_array(handles=ctypes.addressof(handles),
                                                       points=ctypes.addressof(points), count_handles=1,
                                                       flags=LAST_SUBMITTED if last_submitted else 0)
                assert self.emu.ioctl("DRM_IOCTL_SYNCOBJ_QUERY", args)[0] == 0
                self.check(f"QUERY {handle} last_submitted={last_submitted}", points[0],
                           syncobj.query(last_submitted))
            handles = u32s([handle])
            want, _ = expect(lambda s=handle: self.model.wait([s], None, 1, 0, timeline=False))
            args = defs.drm_syncobj_wait(handles=ctypes.addressof(handles), count_handles=1)
            self.check(f"WAIT {handle}", self.emu.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", args)[0], want)
            head = syncobj.fence.seqno if isinstance(syncobj.fence, KChain) else 0
            for point in sorted({p for p in (1, 2, 3, head - 1, head, head + 1) if 0 < p < 1 << 64}):
                want, _ = expect(lambda s=handle, p=point: self.model.wait([s], [p], 1, 0, timeline=True))
                self.check(f"TIMELINE_WAIT {handle}:{point}", _timeline_poll(self.emu, handle, point), want)


SyncobjMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
TestSyncobjModel = SyncobjMachine.TestCase


# --- the cases where a simpler reading of the kernel goes wrong, pinned down -----------------


def _pair() -> tuple[Emulator, KernelModel]:
    return Emulator(), KernelModel()


def _create(emu: Emulator, model: KernelModel) -> int:
    result, out, _ = emu.ioctl("DRM_IOCTL_SYNCOBJ_CREATE", defs.drm_syncobj_create())
    assert result == 0 and out.handle == model.create(0)
    return out.handle


def _submit(emu: Emulator, model: KernelModel, handle: int, point: int) -> DmaFence:
    fence = DmaFence(new_context(), 1, "model", "job")
    emu.attach(handle, fence, point)
    if point:
        model.handles[handle].add_point(KFence(), point)
    else:
        model.handles[handle].replace(KFence())
    return fence


def _timeline_signal(emu: Emulator, model: KernelModel, handle: int, point: int) -> None:
    handles, points = u32s([handle]), u64s([point])
    args = defs.drm_syncobj_timeline_array(handles=ctypes.addressof(handles), points=ctypes.addressof(points),
                                           count_handles=1)
    assert emu.ioctl("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", args)[0] == 0
    model.timeline_signal([handle], [point], 1, 0)


def _query(emu: Emulator, handle: int, flags: int) -> int:
    handles, points = u32s([handle]), u64s([0])
    args = defs.drm_syncobj_timeline_array(handles=ctypes.addressof(handles), points=ctypes.addressof(points),
                                           count_handles=1, flags=flags)
    assert emu.ioctl("DRM_IOCTL_SYNCOBJ_QUERY", args)[0] == 0
    return points[0]


def _timeline_poll(emu: Emulator, handle: int, point: int) -> int:
    handles, points = u32s([handle]), u64s([point])
    args = defs.drm_syncobj_timeline_wait(handles=ctypes.addressof(handles), points=ctypes.addressof(points),
                                          count_handles=1)
    return emu.ioctl("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT", args)[0]


def test_timeline_signal_point_0_chains_onto_the_timeline():
    """drm_syncobj_timeline_signal_ioctl() calls drm_syncobj_add_point() for point 0 too: the
    out-of-order node keeps the timeline (seqno max(prev, 0)), it does not replace it."""
    emu, model = _pair()
    try:
        handle = _create(emu, model)
        _timeline_signal(emu, model, handle, 5)
        _timeline_signal(emu, model, handle, 0)
        assert model.handles[handle].query(True) == 5 and model.wait([handle], [3], 1, 0, True) == 0
        assert _query(emu, handle, LAST_SUBMITTED) == 5
        assert _timeline_poll(emu, handle, 3) == 0
        assert _timeline_poll(emu, handle, 6) == -errno.EINVAL
    finally:
        emu.close()


def test_timeline_signal_point_0_waits_for_the_fence_it_chains_onto():
    emu, model = _pair()
    try:
        handle = _create(emu, model)
        job = _submit(emu, model, handle, 0)
        _timeline_signal(emu, model, handle, 0)
        assert expect(lambda: model.wait([handle], None, 1, 0, False))[0] == -errno.ETIME
        assert _timeline_poll(emu, handle, 0) == -errno.ETIME
        job.signal()
        assert _timeline_poll(emu, handle, 0) == 0
    finally:
        emu.close()


@pytest.mark.parametrize("flags", [0, WAIT_ALL])
def test_a_failed_wait_leaves_first_signaled_alone(flags):
    """drm_syncobj_wait_ioctl() writes first_signaled only on success, and drm_ioctl() copies
    the caller's own bytes back when the ioctl fails."""
    emu, model = _pair()
    try:
        done, pending = _create(emu, model), _create(emu, model)
        done_array = u32s([done])
        assert emu.ioctl("DRM_IOCTL_SYNCOBJ_SIGNAL", defs.drm_syncobj_array(
            handles=ctypes.addressof(done_array), count_handles=1))[0] == 0
        model.array_op("signal", [done], 1, 0)
        _submit(emu, model, pending, 0)
        handles = [pending, done] if flags & WAIT_ALL else [pending]
        assert expect(lambda: model.wait(handles, None, len(handles), flags, False))[0] == -errno.ETIME
        arr = u32s(handles)
        args = defs.drm_syncobj_wait(handles=ctypes.addressof(arr), count_handles=len(handles), flags=flags,
                                     first_signaled=7)
        result, out, _ = emu.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", args)
        assert result == -errno.ETIME
        assert out.first_signaled == 7
    finally:
        emu.close()


@pytest.mark.parametrize("underneath", ["binary fence", "out-of-order point"])
def test_query_walks_as_the_chain_collects(underneath):
    """QUERY's dma_fence_chain_for_each() steps over (collects) every node whose own fence
    has signalled, also one that as a whole still waits for a pending fence further down
    (a binary fence, a point before an out-of-order one): the walk ends on the newer node
    and the answer is its prev_seqno, not 0."""
    emu, model = _pair()
    try:
        handle = _create(emu, model)
        syncobj = model.handles[handle]
        if underneath == "binary fence":
            first = _submit(emu, model, handle, 0)
            _timeline_signal(emu, model, handle, 1)
            _submit(emu, model, handle, 2)
            kernel = 1
        else:
            first = _submit(emu, model, handle, 5)
            _timeline_signal(emu, model, handle, 3)
            _submit(emu, model, handle, 7)
            kernel = 5
        assert syncobj.query_steps_over_a_waiting_node() and syncobj.query(False) == kernel
        assert _query(emu, handle, 0) == kernel
        first.signal()
        assert _query(emu, handle, 0) == syncobj.query(False) == kernel
    finally:
        emu.close()
