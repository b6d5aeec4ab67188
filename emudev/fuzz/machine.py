"""The hypothesis state machine: valid sequences and broken calls, from several clients in two processes.

Each example opens files on the devices from this process and from a forked helper
(driven over a pipe, sometimes killed in the middle of a request), builds up state
with valid sequences (BOs, dma-buf export and import across files and devices,
syncobjs, contexts, uploaded command streams, jobs, sw_sync fences, eventfds) and
mixes in requests drawn by ``strategies.call_plans`` for any ioctl of the spec, valid
or broken. After every step the daemon must be alive and answering; every answer is
checked as it comes (``FuzzEnv.check``); at the end every file is closed and nothing
may be left (``Session.close``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from emudev.fuzz import layout as L
from emudev.fuzz.packets import streams
from emudev.fuzz.plan import CallPlan
from emudev.fuzz.session import MAX_CLIENTS, MAX_FDS, Client, FuzzEnv, Proc, Session
from emudev.fuzz.strategies import MODES, VALID, bo_size_value, call_plans
from emudev.uapi import defs

IOCTL_NAMES = tuple(spec.name for spec in defs.IOCTLS)
# Valid calls that make what others use: handles, fds of every kind, timeline points.
CREATORS = ("DRM_IOCTL_SYNCOBJ_CREATE", "DRM_IOCTL_EMUDEV_CTX_CREATE", "DRM_IOCTL_PRIME_HANDLE_TO_FD",
            "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", "DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", "DRM_IOCTL_SYNCOBJ_SIGNAL",
            "DMA_BUF_IOCTL_EXPORT_SYNC_FILE", "SW_SYNC_IOC_CREATE_FENCE", "SYNC_IOC_MERGE")
BO_FLAGS = (defs.DRM_EMUDEV_BO_MAPPABLE, defs.DRM_EMUDEV_BO_MAPPABLE, 0,
            defs.DRM_EMUDEV_BO_MAPPABLE | defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY, defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY)


class UapiMachine(RuleBasedStateMachine):
    """Set `env` (a started FuzzEnv) before running; every example shares its daemon."""

    env: ClassVar[FuzzEnv | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.env is not None, "UapiMachine.env must be a started FuzzEnv"
        self.s = Session(self.env)

    # ------------------------------------------------------------------ drawing

    def _client(self, data: Any) -> Client:
        return data.draw(st.sampled_from(list(self.s.clients.values())), label="client")

    def _issue(self, client: Client, name: str, data: Any, mode: str | None = None,
               fixed: dict[str, int] | None = None) -> None:
        layout = L.ioctl_layouts()[name]
        plan: CallPlan = data.draw(call_plans(layout, self.s.view(client), mode, fixed), label=name)
        self.s.call(client.proc, plan, client)

    def _has_clients(self) -> bool:
        return bool(self.s.clients)

    # ------------------------------------------------------------------ clients and processes

    @initialize(device=st.integers(0, 1))
    def begin(self, device: int) -> None:
        """One file in this process and one in a forked helper, each with a BO, a syncobj and a context;
        in this process also a dma-buf, a sw_sync timeline and a sync_file, so every kind of file is there."""
        for proc, index in ((self.s.local, device), (self.s.spawn_helper(), device + 1)):
            client = self.s.open_client(proc, index)
            bo = self.s.create_bo(client, 16384, defs.DRM_EMUDEV_BO_MAPPABLE)
            self.s.request(client, "DRM_IOCTL_SYNCOBJ_CREATE", {"flags": defs.DRM_SYNCOBJ_CREATE_SIGNALED})
            self.s.request(client, "DRM_IOCTL_EMUDEV_CTX_CREATE", {"priority": defs.DRM_EMUDEV_PRIORITY_NORMAL})
            if proc is self.s.local and bo is not None:
                self.s.export(client, bo.handle, defs.DRM_CLOEXEC | defs.DRM_RDWR)
                timeline = self.s.open_sw_sync(proc)
                self.s.request(client, "SW_SYNC_IOC_CREATE_FENCE", {"value": 1}, fd=timeline, kind="sw_sync")

    @precondition(lambda self: len(self.s.clients) < MAX_CLIENTS)
    @rule(device=st.integers(0, 1), in_helper=st.booleans())
    def open_client(self, device: int, in_helper: bool) -> None:
        """Another file, on either device, in either process."""
        proc: Proc = self.s.helper if in_helper and self.s.helper else self.s.local
        self.s.open_client(proc, device)

    @precondition(_has_clients)
    @rule(data=st.data())
    def close_client(self, data: Any) -> None:
        """Close a device file, whatever it holds or has queued."""
        self.s.close_client(self._client(data))

    @precondition(lambda self: self.s.helper is None)
    @rule(device=st.integers(0, 1))
    def spawn_helper(self, device: int) -> None:
        """A new helper process (the previous one was killed) with a file open."""
        self.s.open_client(self.s.spawn_helper(), device)

    @precondition(lambda self: self.s.helper is not None)
    @rule(data=st.data())
    def kill_helper(self, data: Any) -> None:
        """SIGKILL the helper, maybe while one of its requests is in flight (a wait, often)."""
        helper = self.s.helper
        clients = [c for c in self.s.clients.values() if c.proc is helper]
        plan = None
        if clients and data.draw(st.booleans(), label="in flight"):
            client = data.draw(st.sampled_from(clients))
            name = data.draw(st.sampled_from(["DRM_IOCTL_SYNCOBJ_WAIT", "DRM_IOCTL_EMUDEV_BO_WAIT", *IOCTL_NAMES]))
            plan = data.draw(call_plans(L.ioctl_layouts()[name], self.s.view(client), VALID), label=name)
        self.s.kill_helper(plan, data.draw(st.sampled_from([0.0, 0.001, 0.005, 0.02])))

    # ------------------------------------------------------------------ valid sequences

    @precondition(_has_clients)
    @rule(data=st.data())
    def create_bo(self, data: Any) -> None:
        """A BO (sometimes device-read-only or not mappable) whose address later packets use."""
        client = self._client(data)
        size = bo_size_value(data.draw, False)
        self.s.create_bo(client, size, data.draw(st.sampled_from(BO_FLAGS), label="flags"))

    @precondition(_has_clients)
    @rule(data=st.data(), name=st.sampled_from(CREATORS))
    def create(self, data: Any, name: str) -> None:
        """What the other sequences need: syncobjs, contexts, dma-buf and syncobj/sync_file fds, points."""
        self._issue(self._client(data), name, data, VALID)

    @precondition(lambda self: any(kind == "dma_buf" for p in self.s.procs() for kind in p.fds.values()))
    @rule(data=st.data())
    def import_dmabuf(self, data: Any) -> None:
        """A dma-buf of this process imported by one of its files, maybe on the other device."""
        owners = [c for c in self.s.clients.values() if "dma_buf" in c.proc.fds.values()]
        if owners:
            client = data.draw(st.sampled_from(owners))
            fd = data.draw(st.sampled_from(sorted(f for f, k in client.proc.fds.items() if k == "dma_buf")))
            self.s.import_dmabuf(client, fd)

    @precondition(_has_clients)
    @rule(data=st.data())
    def upload_stream(self, data: Any) -> None:
        """A command stream (valid, or broken on purpose) written into a new BO."""
        client = self._client(data)
        broken = data.draw(st.booleans(), label="broken stream")
        stream, labels = data.draw(streams(self.s.view(client), broken), label="stream")
        self.s.upload_stream(client, stream, data.draw(st.sampled_from([0, 0, 8, 64])))
        self.env_stats_labels(labels)

    @precondition(lambda self: any(c.ctxs for c in self.s.clients.values()))
    @rule(data=st.data())
    def submit(self, data: Any) -> None:
        """A well-formed SUBMIT of an uploaded stream (a new valid one, or one uploaded before), without
        waits half of the time so that it runs."""
        client = data.draw(st.sampled_from([c for c in self.s.clients.values() if c.ctxs]))
        if not client.streams or data.draw(st.booleans(), label="new stream"):
            stream, _ = data.draw(streams(self.s.view(client), False), label="stream")
            self.s.upload_stream(client, stream, 0)
        fixed = {"in_sync_count": 0} if data.draw(st.booleans()) else None
        self._issue(client, "DRM_IOCTL_EMUDEV_SUBMIT", data, VALID, fixed)

    @precondition(lambda self: len(self.s.local.fds) < MAX_FDS)
    @rule(data=st.data(), what=st.sampled_from(["sw_sync", "eventfd", "fence"]))
    def files(self, data: Any, what: str) -> None:
        """A sw_sync timeline, an eventfd, or a sw_sync fence (a sync_file) on a timeline."""
        proc: Proc = data.draw(st.sampled_from(self.s.procs()))
        if what == "sw_sync":
            self.s.open_sw_sync(proc)
        elif what == "eventfd":
            self.s.eventfd(proc)
        elif "sw_sync" in proc.fds.values():
            client = next((c for c in self.s.clients.values() if c.proc is proc), None)
            if client is not None:
                self._issue(client, data.draw(st.sampled_from(["SW_SYNC_IOC_CREATE_FENCE", "SW_SYNC_IOC_INC"])),
                            data, VALID)

    @precondition(lambda self: any(p.fds for p in self.s.procs()))
    @rule(data=st.data())
    def close_fd(self, data: Any) -> None:
        """Close a dma-buf, sync_file, syncobj, sw_sync or eventfd: what depends on it must not care."""
        proc = data.draw(st.sampled_from([p for p in self.s.procs() if p.fds]))
        self.s.close_fd(proc, data.draw(st.sampled_from(sorted(proc.fds))))

    @precondition(_has_clients)
    @rule(data=st.data(), name=st.sampled_from(IOCTL_NAMES))
    def valid_call(self, data: Any, name: str) -> None:
        """Any ioctl, every field valid-looking."""
        self._issue(self._client(data), name, data, VALID)

    # ------------------------------------------------------------------ broken calls

    @precondition(_has_clients)
    @rule(data=st.data(), name=st.sampled_from(IOCTL_NAMES), mode=st.sampled_from(MODES))
    def fuzz_call(self, data: Any, name: str, mode: str) -> None:
        """Any ioctl, valid or broken in its fields or in the request itself."""
        self._issue(self._client(data), name, data, mode)

    @precondition(_has_clients)
    @rule(data=st.data(), name=st.sampled_from(IOCTL_NAMES), mode=st.sampled_from(MODES[3:]))
    def fuzz_broken(self, data: Any, name: str, mode: str) -> None:
        """Any ioctl, surely broken (a second rule: broken requests are what finds bugs)."""
        self._issue(self._client(data), name, data, mode)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def daemon_answers(self) -> None:
        """After every step: the daemon runs and answers at once."""
        assert self.env is not None
        self.env.stats.steps += 1
        self.env.check_alive()

    def teardown(self) -> None:
        """Close everything; nothing may be left in the daemon."""
        self.s.close()

    def env_stats_labels(self, labels: tuple[str, ...]) -> None:
        """Count what a broken stream broke, for the summary."""
        assert self.env is not None
        for label in labels:
            self.env.stats.broken["stream:" + label.split(":")[0]] += 1
