"""The fuzzing clients and the daemon they talk to, with every invariant checked as they go.

``FuzzEnv`` owns one daemon for a whole run (restarted if a bug kills it) and the
checks that do not depend on one example: each answer against the errno oracle
(``errnos.allowed``), every call within a time bound (a watchdog; a hung call kills
the daemon so that the test ends), the daemon alive and answering, no exception in its
log, and at the end of an example no leak: once every client file is closed the debug
files show no BO, no device memory in use, no syncobj, no queued or running job, and
the daemon's thread and fd counts are back to their baseline.

``Session`` is one example's world: files opened on 1 or 2 devices by this process and
by a forked helper process, what each file holds (handles, contexts, jobs, uploaded
command streams) and the fds each process holds (dma-bufs, sync_files, syncobj files,
sw_sync timelines, eventfds). Its actions are the valid sequences; ``call`` issues any
plan, checks the answer and learns from it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from emudev.fuzz import errnos, known
from emudev.fuzz import layout as L
from emudev.fuzz.executor import Executor, Helper, HelperTimeout
from emudev.fuzz.known import KNOWN_BUGS, KnownBug, avoided
from emudev.fuzz.plan import BUFFER, CallPlan, CallResult, Deadline, Pointer, get_int, put_int
from emudev.fuzz.stats import Finding, Stats
from emudev.fuzz.strategies import BoView, StreamView, View
from emudev.testing import MountedEmudev
from emudev.uapi import defs, isa
from emudev.uapi.types import IOC_READ, ioc_dir, ioc_size

CALL_BOUND = 2.0       # seconds any request may take: waits are bounded at 50 ms, the rest is slack
SETTLE = 5.0           # seconds for a closed example's objects to go (a running job ends within its timeout)
JOB_TIMEOUT_MS = 100   # the daemon's job timeout: jobs stuck on a semaphore end quickly
MAX_CLIENTS = 6
MAX_FDS = 40           # per process; the oldest are closed beyond
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)
_LOG_PROBLEM = re.compile(r"^\S+ \S+ \d+ \S+ (ERROR|CRITICAL) |^Traceback", re.MULTILINE)


class DaemonBug(AssertionError):
    """A finding: the test fails with it (hypothesis then shrinks the steps that led there)."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding


@dataclass(frozen=True)
class Health:
    threads: int
    fds: int
    rss: int


class Watchdog:
    """Calls `expire(what)` once if a guarded block runs past its bound."""

    def __init__(self, expire: Callable[[str], None]) -> None:
        self._expire = expire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._what = ""
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="fuzz-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, seconds: float) -> Iterator[None]:
        with self._cond:
            self._deadline, self._what = time.monotonic() + seconds, what
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                what, self._deadline = self._what, None
                self._expire(what)


# --------------------------------------------------------------------------- processes


class Proc:
    """A process issuing requests, and the fds it holds (other than its device files)."""

    def __init__(self, env: FuzzEnv, pid: int) -> None:
        self.env = env
        self.pid = pid
        self.fds: dict[int, str] = {}
        self.closed: list[int] = []

    def run(self, plan: CallPlan) -> CallResult:
        raise NotImplementedError

    def op(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    def forget(self, fd: int) -> None:
        self.fds.pop(fd, None)
        self.closed = [*self.closed[-7:], fd]


class LocalProc(Proc):
    """This process; its calls are guarded by the env's watchdog."""

    def __init__(self, env: FuzzEnv) -> None:
        super().__init__(env, os.getpid())

    def run(self, plan: CallPlan) -> CallResult:
        assert self.env.executor is not None
        with self.env.watchdog.guard(plan.describe(), self.env.call_bound):
            return self.env.executor.run(plan)

    def op(self, name: str, *args: Any) -> Any:
        assert self.env.executor is not None
        try:
            with self.env.watchdog.guard(f"{name}{args}", self.env.call_bound):
                return getattr(self.env.executor, name)(*args)
        except OSError as e:
            self.env.check_error(f"{name}{args}", e)
            raise


class HelperProc(Proc):
    """A forked helper; a request it does not answer in time is a hang."""

    def __init__(self, env: FuzzEnv) -> None:
        self.helper = Helper(env.mountpoint)
        super().__init__(env, self.helper.pid)

    def run(self, plan: CallPlan) -> CallResult:
        result: CallResult = self._ask(("run", plan), plan.describe())
        return result

    def op(self, name: str, *args: Any) -> Any:
        return self._ask((name, *args), f"{name}{args}")

    def _ask(self, message: tuple[Any, ...], what: str) -> Any:
        try:
            return self.helper.call(message, self.env.call_bound)
        except OSError as e:
            self.env.check_error(what, e)
            raise
        except HelperTimeout:
            self.env.on_hang(f"helper {self.pid}: {what}")
            self.helper.kill()
            raise self.env.failure() from None
        except EOFError:
            self.helper.kill()
            raise self.env.fail(Finding("crash", "-", f"helper {self.pid} died during {what}")) from None


# --------------------------------------------------------------------------- the daemon


class FuzzEnv:
    """One daemon for a run, the oracle and the invariants that span examples."""

    def __init__(self, devices: int = 2, call_bound: float = CALL_BOUND, job_timeout_ms: int = JOB_TIMEOUT_MS,
                 known: Sequence[KnownBug] = KNOWN_BUGS, extra_args: Sequence[str] = ()) -> None:
        self.devices = devices
        self.call_bound = call_bound
        self.args = ("--job-timeout", str(job_timeout_ms), *extra_args)
        self.known = tuple(known)
        self.avoid = avoided(self.known)
        self.stats = Stats()
        self.mount: MountedEmudev | None = None
        self.executor: Executor | None = None
        self.watchdog = Watchdog(self.on_hang)
        self.baseline: Health | None = None
        self.start_health: Health | None = None
        self.restarts = 0
        self._hang: Finding | None = None
        self.recent: collections.deque[str] = collections.deque(maxlen=6)
        self._probe = -1
        self._ticket_floor = -defs.DRM_EMUDEV_FD_TICKET_MAX
        self._log_seen = 0
        self.failed = False
        self.va_start = 1 << 32
        self.va_end = 1 << 40

    # ------------------------------------------------------------------ lifecycle

    @property
    def mountpoint(self) -> str:
        assert self.mount is not None
        return self.mount.mountpoint

    def node(self, device: int) -> str:
        assert self.mount is not None
        return self.mount.node(device)

    def start(self) -> FuzzEnv:
        self.mount = MountedEmudev(devices=self.devices, extra_args=self.args).start()
        self.executor = Executor(self.mount.mountpoint)
        self._probe = os.open(self.node(0), os.O_RDWR | os.O_CLOEXEC)
        self._hang = None
        self._log_seen = 0
        self._ticket_floor = -defs.DRM_EMUDEV_FD_TICKET_MAX  # a new daemon numbers tickets from the start
        self.va_start = self.get_param(defs.DRM_EMUDEV_PARAM_VA_START)
        self.va_end = self.get_param(defs.DRM_EMUDEV_PARAM_VA_END)
        return self

    def stop(self) -> None:
        if self._probe >= 0:
            with contextlib.suppress(OSError):
                os.close(self._probe)
            self._probe = -1
        if self.mount is not None:
            self.mount.stop()

    def close(self) -> None:
        self.stop()
        self.watchdog.stop()

    def alive(self) -> bool:
        return self.mount is not None and self.mount.proc is not None and self.mount.proc.poll() is None

    def ensure(self) -> None:
        """A live, clean daemon for the next example: a failed example may have killed it or left objects."""
        if not self.alive() or self._hang is not None or self.failed:
            self.stop()
            self.restarts += 1
            self.failed = False
            self.start()
            warm_up(self)

    def health(self) -> Health:
        assert self.mount is not None
        proc = psutil.Process(self.mount.pid)
        return Health(proc.num_threads(), proc.num_fds(), proc.memory_info().rss)

    def set_baseline(self) -> None:
        """Thread and fd counts every example must return to (after a warm-up started the lazy threads)."""
        self.baseline = self.health()
        if self.start_health is None:
            self.start_health = self.baseline

    def get_param(self, param: int) -> int:
        args = defs.drm_emudev_param(param=param)
        fcntl.ioctl(self._probe, defs.DRM_IOCTL_EMUDEV_GET_PARAM, args, True)
        return int(args.value)

    # ------------------------------------------------------------------ the checks

    def fail(self, finding: Finding) -> DaemonBug:
        """Record a finding; the exception to raise with it. The example's end skips its leak check."""
        self.failed = True
        self.stats.add(finding)
        return DaemonBug(finding)

    def failure(self) -> DaemonBug:
        """The hang the watchdog recorded, as the exception to fail with."""
        assert self._hang is not None
        return self.fail(self._hang)

    def on_hang(self, what: str) -> None:
        """A call ran past its bound: record where the daemon's threads are, then kill it so the call returns."""
        threads = []
        if self.mount is not None and self.alive():
            for task in sorted(os.listdir(f"/proc/{self.mount.pid}/task")):
                with contextlib.suppress(OSError):
                    comm = open(f"/proc/{self.mount.pid}/task/{task}/comm").read().strip()
                    wchan = open(f"/proc/{self.mount.pid}/task/{task}/wchan").read().strip()
                    threads.append(f"{comm}:{wchan}")
        self._hang = Finding("hang", what.split(" ")[0], f"no answer within {self.call_bound}s; daemon threads "
                             + " ".join(threads), what)
        self.stats.add(self._hang)
        if self.mount is not None and self.alive():
            os.kill(self.mount.pid, signal.SIGKILL)

    def check(self, plan: CallPlan, result: CallResult) -> None:
        """The answer against the oracle; a dead daemon or a hang is a finding too."""
        if self._hang is not None:
            raise self.failure()
        if result.err in DEAD or not self.alive():
            finding = Finding("crash", plan.ioctl, f"the daemon died ({errno.errorcode.get(result.err, '?')}); "
                              f"log tail: {self.log_tail()}", plan.describe())
            raise self.fail(finding)
        expect = errnos.allowed(plan.kind, plan.cmd, bad_arg=plan.bad_arg)
        wrong = result.err not in expect.errnos if result.err else expect.spec is None
        if wrong:
            matching = [bug.name for bug in self.known if bug.matches(plan, result, expect)]
            if matching:
                self.stats.known.update(matching)
                return
            got = errnos.errno_name(result.err) if result.err else "success"
            finding = Finding("errno", expect.spec.name if expect.spec else plan.ioctl,
                              f"got {got}, the kernel gives {'|'.join(expect.names())} ({expect.why})",
                              plan.describe())
            raise self.fail(finding)
        self.check_log(plan.describe())

    def check_error(self, what: str, error: OSError) -> None:
        """A file operation (open, close, mmap) failed: a finding if the daemon is gone or hung."""
        if self._hang is not None:
            raise self.failure()
        if error.errno in DEAD or not self.alive():
            raise self.fail(Finding("crash", what.split("(")[0], f"the daemon died ({error}); "
                                    f"log tail: {self.log_tail()}", what))

    def check_alive(self) -> None:
        """The daemon runs and answers a trivial request at once."""
        if self._hang is not None:
            raise self.failure()
        if not self.alive():
            finding = Finding("crash", "-", f"the daemon exited; log tail: {self.log_tail()}")
            raise self.fail(finding)
        start = time.monotonic()
        with self.watchdog.guard("GET_PARAM on the probe file", self.call_bound):
            self.get_param(defs.DRM_EMUDEV_PARAM_DEVICE_ID)
        if self._hang is not None:
            raise self.failure()
        if time.monotonic() - start > self.call_bound:
            raise self.fail(Finding("hang", "-", "the probe request was slow"))

    def log_tail(self, lines: int = 5) -> str:
        """How the daemon ended, its last log lines and the last requests issued."""
        text = self.mount.log_text() if self.mount else ""
        status = self.mount.proc.poll() if self.mount and self.mount.proc else None
        return (f"exit status {status}; log: " + " | ".join(text.strip().splitlines()[-lines:])
                + "; last requests: " + " || ".join(self.recent))

    def check_log(self, request: str = "") -> None:
        """No ERROR record and no traceback appeared in the daemon's log since the last look."""
        assert self.mount is not None
        try:
            size = os.stat(self.mount.log_path).st_size
        except OSError:
            return
        if size == self._log_seen:
            return
        with open(self.mount.log_path, errors="replace") as f:
            f.seek(self._log_seen)
            text = f.read()
        self._log_seen = size
        match = _LOG_PROBLEM.search(text)
        if match:
            excerpt = text[match.start():][:1500]
            finding = Finding("log", "-", f"the daemon logged: {excerpt}", request)
            raise self.fail(finding)

    def leaks(self) -> list[str]:
        """What is left once every fuzzing file is closed (the probe file stays open on accel0)."""
        assert self.mount is not None
        problems = []
        for device in range(self.devices):
            name = f"accel{device}"
            objects = self.mount.debug(name, "gem_objects").strip().splitlines()
            numbers = [int(n) for n in re.findall(r"\d+", objects[-1])]
            if numbers[0] or numbers[2]:
                problems.append(f"{name} gem_objects: " + " / ".join(line.strip() for line in objects[1:]))
            fences = self.mount.debug(name, "fences").strip().splitlines()[1:]
            if fences:
                problems.append(f"{name} fences: {len(fences)} syncobjs")
            clients = len(self.mount.debug(name, "clients").strip().splitlines()) - 1
            if clients != (1 if device == 0 else 0):
                problems.append(f"{name} clients: {clients} open files")
            jobs = self.mount.debug(name, "engines").strip().splitlines()[-1]
            if "queued 0," not in jobs or "running none" not in jobs:
                problems.append(f"{name} engines: {jobs}")
        if self.baseline is not None:
            now = self.health()
            if now.threads != self.baseline.threads:
                problems.append(f"daemon threads: {now.threads}, baseline {self.baseline.threads}")
            if now.fds != self.baseline.fds:
                problems.append(f"daemon fds: {now.fds}, baseline {self.baseline.fds}")
        return problems

    def check_clean(self) -> None:
        """Wait (bounded) for everything of a finished example to be released."""
        deadline = time.monotonic() + SETTLE
        while True:
            problems = self.leaks()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise self.fail(Finding("leak", "-", "; ".join(problems)))
            time.sleep(0.01)

    def sweep_tickets(self) -> None:
        """Claim and close every ticket this process got but never saw (a call whose copy-back was
        cut short by a broken size or direction): like fds a process forgot, until it exits."""
        assert self.executor is not None
        create = defs.drm_emudev_bo_create(size=4096)
        fcntl.ioctl(self._probe, defs.DRM_IOCTL_EMUDEV_BO_CREATE, create, True)
        export = defs.drm_prime_handle(handle=create.handle, flags=defs.DRM_CLOEXEC)
        fcntl.ioctl(self._probe, defs.DRM_IOCTL_PRIME_HANDLE_TO_FD, export, True)
        fcntl.ioctl(self._probe, defs.DRM_IOCTL_GEM_CLOSE, defs.drm_gem_close(handle=create.handle), True)
        last = -export.fd
        for number in range(self._ticket_floor, last + 1):
            with contextlib.suppress(OSError):
                os.close(os.open(os.path.join(self.mountpoint, "fd", str(number)), os.O_RDONLY | os.O_CLOEXEC))
        self._ticket_floor = last + 1


# --------------------------------------------------------------------------- one example


@dataclass(eq=False)
class Client:
    """An open device file and what the model knows it holds."""

    cid: int
    proc: Proc
    device: int
    fd: int
    bos: dict[int, BoView] = field(default_factory=dict)
    gem: set[int] = field(default_factory=set)
    syncobjs: set[int] = field(default_factory=set)
    max_point: int = 0
    ctxs: set[int] = field(default_factory=set)
    jobs: list[tuple[int, int]] = field(default_factory=list)
    streams: list[StreamView] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Client({self.cid}, pid {self.proc.pid}, accel{self.device}, fd {self.fd})"

    def drop_gem(self, handle: int) -> None:
        self.gem.discard(handle)
        self.bos.pop(handle, None)
        self.streams = [s for s in self.streams if s.handle != handle]

    def rename_gem(self, old: int, new: int) -> None:
        """GEM_CHANGE_HANDLE moved a handle."""
        bo = self.bos.get(old)
        self.drop_gem(old)
        self.gem.add(new)
        if bo is not None:
            self.bos[new] = replace(bo, handle=new)


class Session:
    """One example: clients in this process and a helper, their resources, every call checked."""

    def __init__(self, env: FuzzEnv) -> None:
        self.env = env
        env.ensure()
        env.failed = False
        self.local = LocalProc(env)
        self.helper: HelperProc | None = None
        self.clients: dict[int, Client] = {}
        self.flinks: set[int] = set()
        self._next = 1
        env.stats.examples += 1

    # ------------------------------------------------------------------ views

    def procs(self) -> list[Proc]:
        return [self.local] + ([self.helper] if self.helper else [])

    def view(self, client: Client) -> View:
        device_fds = [(c.fd, L.DEVICE) for c in self.clients.values() if c.proc is client.proc and c is not client]
        return View(client=client.cid, device_fd=client.fd, bos=tuple(client.bos[h] for h in sorted(client.bos)),
                    gem=tuple(sorted(client.gem)), syncobjs=tuple(sorted(client.syncobjs)),
                    max_point=client.max_point, ctxs=tuple(sorted(client.ctxs)), jobs=tuple(client.jobs[-8:]),
                    streams=tuple(client.streams[-6:]), flinks=tuple(sorted(self.flinks)[-4:]),
                    fds=tuple(sorted(client.proc.fds.items())) + tuple(device_fds),
                    closed_fds=tuple(fd for fd in client.proc.closed if fd not in client.proc.fds),
                    va_start=self.env.va_start, va_end=self.env.va_end, avoid=self.env.avoid)

    def proc_view(self, proc: Proc) -> View:
        return View(fds=tuple(sorted(proc.fds.items())), closed_fds=tuple(proc.closed))

    # ------------------------------------------------------------------ calls

    def call(self, proc: Proc, plan: CallPlan, client: Client | None = None) -> CallResult:
        """Issue `plan` in `proc`, check the answer, learn what it created or destroyed."""
        if known.SYNC_START_WAIT in self.env.avoid:
            plan = known.no_waiting_sync(plan)
        self.env.recent.append(f"pid {proc.pid}: {plan.describe()}")
        result = proc.run(plan)
        self.env.stats.record(plan.ioctl, result.err, result.elapsed, plan.labels)
        for fd, kind in result.claimed:
            proc.fds[fd] = kind
        self.env.check(plan, result)
        if client is not None:
            self._learn(client, plan, result)
        self._trim(proc)
        return result

    def request(self, client: Client, name: str, values: Mapping[str, int] | None = None,
                arrays: Mapping[str, bytes] | None = None, deadlines: Mapping[str, int] | None = None,
                fd: int | None = None, kind: str | None = None) -> CallResult:
        """A well-formed request with explicit values (the valid sequences)."""
        plan = build_plan(L.ioctl_layouts()[name], client.fd if fd is None else fd, kind or L.DEVICE,
                          values or {}, arrays or {}, deadlines or {}, client=client.cid)
        return self.call(client.proc, plan, client)

    def _learn(self, client: Client, plan: CallPlan, result: CallResult) -> None:
        layout = L.ioctl_layouts()[plan.ioctl]
        spec, _, _ = errnos.route(plan.kind, plan.cmd)
        if result.err or spec is None or spec.name != plan.ioctl or plan.arg_kind != BUFFER:
            return
        size = ioc_size(plan.cmd)
        inputs = {f.name: get_int(plan.arg, f.offset, f.size) for f in layout.struct.fields if f.offset < size}
        if plan.ioctl.endswith(("_CLOSE", "_DESTROY")):
            for f in layout.struct.fields:
                role = L.base_role(f.role)
                if f.name in inputs and role in L.RESOURCE_ROLES and not f.role.startswith(L.OUT_PREFIX):
                    self._forget(client, role, inputs[f.name])
                    break
            return
        for f in layout.struct.fields:
            role = L.base_role(f.role)
            if role == L.POINT and f.name in inputs and inputs[f.name] < 1 << 16:
                client.max_point = max(client.max_point, inputs[f.name])
            if role == L.GEM_NEW and f.name in inputs:
                old = next(inputs[g.name] for g in layout.struct.fields if L.base_role(g.role) == L.GEM)
                client.rename_gem(old, inputs[f.name])
        if not ioc_dir(plan.cmd) & IOC_READ:
            return
        for f in layout.struct.fields:
            role = L.base_role(f.role)
            if role in L.RESOURCE_ROLES and f.direction in ("out", "inout") and f.offset + f.size <= size:
                self._remember(client, role, get_int(result.out, f.offset, f.size), inputs)

    def _remember(self, client: Client, role: str, value: int, inputs: Mapping[str, int]) -> None:
        if role == L.GEM:
            client.gem.add(value)
        elif role == L.SYNCOBJ:
            client.syncobjs.add(value)
        elif role == L.CTX:
            client.ctxs.add(value)
        elif role == L.FLINK:
            self.flinks.add(value)
        elif role == L.SEQNO and "ctx_id" in inputs:
            client.jobs.append((inputs["ctx_id"], value))

    def _forget(self, client: Client, role: str, value: int) -> None:
        if role == L.GEM:
            client.drop_gem(value)
        elif role == L.SYNCOBJ:
            client.syncobjs.discard(value)
        elif role == L.CTX:
            client.ctxs.discard(value)

    def _trim(self, proc: Proc) -> None:
        """Close the oldest fds of a process beyond MAX_FDS (the fds a long example accumulates)."""
        while len(proc.fds) > MAX_FDS:
            self.close_fd(proc, min(proc.fds))

    # ------------------------------------------------------------------ valid sequences

    def open_client(self, proc: Proc, device: int) -> Client:
        fd = proc.op("open", self.env.node(device % self.env.devices))
        client = Client(self._next, proc, device % self.env.devices, fd)
        self._next += 1
        self.clients[client.cid] = client
        return client

    def close_client(self, client: Client) -> None:
        self.env.recent.append(f"pid {client.proc.pid}: close device fd {client.fd}")
        del self.clients[client.cid]
        client.proc.op("close", client.fd)

    def close_fd(self, proc: Proc, fd: int) -> None:
        self.env.recent.append(f"pid {proc.pid}: close {proc.fds.get(fd, '?')} fd {fd}")
        proc.forget(fd)
        with contextlib.suppress(OSError):
            proc.op("close", fd)

    def spawn_helper(self) -> HelperProc:
        assert self.helper is None
        self.helper = HelperProc(self.env)
        return self.helper

    def kill_helper(self, in_flight: CallPlan | None = None, after: float = 0.0) -> None:
        """SIGKILL the helper, optionally while it issues `in_flight`: the daemon must clean up after it."""
        assert self.helper is not None
        helper, self.helper = self.helper, None
        if in_flight is not None:
            helper.helper.send(("run", in_flight))
            time.sleep(after)
        helper.helper.kill()
        for cid in [c.cid for c in self.clients.values() if c.proc is helper]:
            del self.clients[cid]

    def create_bo(self, client: Client, size: int, flags: int) -> BoView | None:
        result = self.request(client, "DRM_IOCTL_EMUDEV_BO_CREATE", {"size": size, "flags": flags})
        if result.err:
            return None
        return self.bo_info(client, get_int(result.out, defs.drm_emudev_bo_create.handle.offset, 4))

    def bo_info(self, client: Client, handle: int) -> BoView | None:
        result = self.request(client, "DRM_IOCTL_EMUDEV_BO_INFO", {"handle": handle})
        if result.err:
            return None
        info = defs.drm_emudev_bo_info.from_bytes(result.out)
        bo = BoView(handle, int(info.size), int(info.device_va), int(info.flags))
        client.bos[handle] = bo
        client.gem.add(handle)
        return bo

    def export(self, client: Client, handle: int, flags: int) -> int | None:
        result = self.request(client, "DRM_IOCTL_PRIME_HANDLE_TO_FD", {"handle": handle, "flags": flags})
        return result.claimed[0][0] if not result.err and result.claimed else None

    def import_dmabuf(self, client: Client, fd: int) -> None:
        result = self.request(client, "DRM_IOCTL_PRIME_FD_TO_HANDLE", {"fd": fd})
        if not result.err:
            self.bo_info(client, get_int(result.out, defs.drm_prime_handle.handle.offset, 4))

    def upload_stream(self, client: Client, stream: bytes, offset: int) -> StreamView | None:
        """A BO holding `stream` at `offset`, written through a mapping of its dma-buf."""
        bo = self.create_bo(client, max(1, offset + len(stream)), defs.DRM_EMUDEV_BO_MAPPABLE)
        if bo is None:
            return None
        fd = self.export(client, bo.handle, defs.DRM_CLOEXEC | defs.DRM_RDWR)
        if fd is None:
            return None
        try:
            client.proc.op("write_bo", fd, offset, stream)
        finally:
            self.close_fd(client.proc, fd)
        view = StreamView(bo.handle, offset, len(stream), bo.size)
        client.streams.append(view)
        return view

    def open_sw_sync(self, proc: Proc) -> int:
        fd = proc.op("open", os.path.join(self.env.mountpoint, "sw_sync"))
        proc.fds[fd] = "sw_sync"
        return fd

    def eventfd(self, proc: Proc) -> int:
        fd = proc.op("eventfd")
        proc.fds[fd] = "eventfd"
        return fd

    # ------------------------------------------------------------------ the end

    def close(self, check: bool = True) -> None:
        """Close every file of the example, let the helper exit, then check nothing is left."""
        for client in list(self.clients.values()):
            if client.proc is self.local:
                with contextlib.suppress(OSError, DaemonBug):
                    self.close_client(client)
        for fd in list(self.local.fds):
            self.close_fd(self.local, fd)
        if self.helper is not None:
            self.helper.helper.exit()
            self.helper = None
        self.clients.clear()
        if not check or self.env.failed or not self.env.alive():
            return
        self.env.check_log()
        self.env.sweep_tickets()
        self.env.check_clean()
        self.env.check_log()


def warm_up(env: FuzzEnv) -> None:
    """Start everything the daemon starts lazily and keeps (engine and scheduler threads of every
    device, the deadline timer, a job timeout and reset), then take the thread/fd baseline."""
    session = Session(env)
    engines = sorted(defs.ENUMS["drm_emudev_engine"].members.values())
    for device in range(env.devices):
        client = session.open_client(session.local, device)
        bo = session.create_bo(client, 16384, defs.DRM_EMUDEV_BO_MAPPABLE)
        assert bo is not None, "warm-up: BO_CREATE failed"
        ctx_ok = session.request(client, "DRM_IOCTL_EMUDEV_CTX_CREATE", {"priority": 1})
        stuck_ok = session.request(client, "DRM_IOCTL_EMUDEV_CTX_CREATE", {"priority": 1})
        ctx, stuck = (get_int(r.out, defs.drm_emudev_ctx_create.ctx_id.offset, 4) for r in (ctx_ok, stuck_ok))
        syncobj, stuck_done = (get_int(session.request(client, "DRM_IOCTL_SYNCOBJ_CREATE", {}).out, 0, 4)
                               for _ in range(2))
        packets = b"".join(isa.encode("TIMESTAMP", engine=e, va=bo.va + 8 * e) for e in engines)
        runs = session.upload_stream(client, packets, 0)
        hangs = session.upload_stream(client, isa.encode("SEM_WAIT", engine=0, cond=defs.DRM_EMUDEV_SEM_EQUAL,
                                                         va=bo.va + 1024, value=1), 0)
        assert runs is not None and hangs is not None, "warm-up: upload failed"
        for ctx_id, stream, out in ((ctx, runs, syncobj), (stuck, hangs, stuck_done)):
            session.request(client, "DRM_IOCTL_EMUDEV_SUBMIT",
                            {"ctx_id": ctx_id, "cmd_handle": stream.handle, "cmd_size": stream.size,
                             "out_sync_count": 1, "bo_stride": 8, "sync_stride": 16},
                            arrays={"out_syncs": struct.pack("<IIQ", out, 0, 0), "bos": b"", "in_syncs": b""})
        # Both jobs end (the second by the job timeout) before anything they use is released.
        handles = struct.pack("<II", syncobj, stuck_done)
        deadline = time.monotonic() + SETTLE
        while session.request(client, "DRM_IOCTL_SYNCOBJ_WAIT",
                              {"count_handles": 2, "flags": defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL},
                              arrays={"handles": handles}, deadlines={"timeout_nsec": 40_000_000}).err:
            assert time.monotonic() < deadline, "warm-up: the jobs did not complete"
        empty = get_int(session.request(client, "DRM_IOCTL_SYNCOBJ_CREATE", {}).out, 0, 4)
        session.request(client, "DRM_IOCTL_SYNCOBJ_WAIT",
                        {"count_handles": 1, "flags": defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT},
                        arrays={"handles": struct.pack("<I", empty)}, deadlines={"timeout_nsec": 5_000_000})
        session.eventfd(session.local)
        session.open_sw_sync(session.local)
    helper = session.open_client(session.spawn_helper(), 0)
    session.create_bo(helper, 4096, 0)
    session.kill_helper()
    session.close()
    env.set_baseline()


def build_plan(layout: L.IoctlLayout, fd: int, kind: str, values: Mapping[str, int],
               arrays: Mapping[str, bytes] | None = None, deadlines: Mapping[str, int] | None = None,
               client: int = -1, cmd: int | None = None) -> CallPlan:
    """A request with explicit field values, array payloads and deadlines (now + ns)."""
    struct = layout.struct
    cmd = layout.spec.cmd if cmd is None else cmd
    buf = bytearray(max(struct.size, ioc_size(cmd)))
    for name, value in values.items():
        f = struct.field(name)
        put_int(buf, f.offset, f.size, value)
    pointers = tuple(Pointer(struct.field(name).offset, BUFFER, payload) for name, payload in (arrays or {}).items())
    times = tuple(Deadline(struct.field(name).offset, delta) for name, delta in (deadlines or {}).items())
    tickets = tuple((f.offset, f.size) for f in struct.fields
                    if f.base == "s32" and f.direction in ("out", "inout") and ioc_dir(cmd) & IOC_READ)
    return CallPlan(ioctl=layout.name, fd=fd, kind=kind, cmd=cmd, arg=bytes(buf), pointers=pointers,
                    deadlines=times, by_value=layout.spec.by_value, ticket_fields=tickets, client=client)
