"""What tracing costs: the ioctl round trip before tracing was ever switched on, with a reader, and after.

Tracing is off until someone reads MOUNT/debug/trace, and the promise is that a daemon nobody
traces pays nothing measurable for it: every hook is one test of `emudev.trace.active`. So one
daemon is timed with ioctl_latency's Python GET_CAP loop in three states: before the trace file
was ever opened (the baseline), with a reader attached (`cat` of the file into /dev/null, in a
process of its own: a reader never sees its own process's requests), and after the reader left.
The last two alternate in rounds so that drift hits them alike. Then the dispatcher alone is timed
in-process, where the off path's one test is not lost in the FUSE round trip: without the hook
(calling the dispatcher's body directly), with it and tracing off, and with an in-process reader.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable

from benchmarks.ioctl_latency import DRM_CAP_TIMESTAMP_MONOTONIC, Latency, summarise, time_ioctl
from emudev.driver.drv import create_devices, create_dispatcher
from emudev.drm.device import DeviceConfig
from emudev.drm.file import ClientIdentity
from emudev.drm.usermem import UserMemory
from emudev.testing import DaemonStartError, MountedEmudev
from emudev.trace.reader import TraceReader
from emudev.trace.tracer import Tracer
from emudev.uapi import defs

CALLS = 2000
QUICK_CALLS = 400
ROUNDS = 5
QUICK_ROUNDS = 2
IN_PROCESS_CALLS = 20000
LABEL_WIDTH = 40
ATTACH_TIMEOUT_S = 10.0
TIMES = "\N{MULTIPLICATION SIGN}"
NEVER, ON, OFF = "trace file never opened", "tracing on (a reader attached)", "tracing off again (reader gone)"
NO_HOOK, HOOK_OFF, HOOK_ON = "no hook (the dispatcher's body)", "tracing off (the hook's one test)", \
    "tracing on (a reader attached)"


def _readers(mount: MountedEmudev) -> int:
    found = re.search(r"^trace: on \((\d+) readers?", mount.debug("daemon"), re.M)
    return int(found[1]) if found else 0


class _Reader:
    """`cat MOUNT/debug/trace > /dev/null`: the cheapest reader there is, in its own process."""

    def __init__(self, mount: MountedEmudev) -> None:
        self.proc = subprocess.Popen(["cat", os.path.join(mount.mountpoint, "debug", "trace")],
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while not _readers(mount):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the reader did not attach")
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def round_trips(calls: int, rounds: int) -> dict[str, Latency]:
    """GET_CAP through the mount in the three states; ON and OFF alternate, `rounds` times."""
    samples: dict[str, list[int]] = {NEVER: [], ON: [], OFF: []}
    buf = bytearray(defs.drm_get_cap(capability=DRM_CAP_TIMESTAMP_MONOTONIC))
    with MountedEmudev(devices=1, check=False) as mount:
        fd = os.open(mount.node(0), os.O_RDWR)
        try:
            samples[NEVER] += time_ioctl(fd, defs.DRM_IOCTL_GET_CAP, buf, calls * rounds)
            for _ in range(rounds):
                reader = _Reader(mount)
                try:
                    samples[ON] += time_ioctl(fd, defs.DRM_IOCTL_GET_CAP, buf, calls)
                finally:
                    reader.stop()
                samples[OFF] += time_ioctl(fd, defs.DRM_IOCTL_GET_CAP, buf, calls)
        finally:
            os.close(fd)
    return {state: summarise(values) for state, values in samples.items()}


def _time(call: Callable[[], object], calls: int) -> list[int]:
    clock = time.perf_counter_ns
    for _ in range(calls // 10):
        call()
    samples = []
    for _ in range(calls):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


def dispatcher_alone(calls: int) -> dict[str, Latency]:
    """DrmDispatcher in this process: its body without the hook, through the hook with tracing off, and on."""
    device = create_devices(1, DeviceConfig(memory_size=1 << 24))[0]
    file = device.open_file(ClientIdentity(os.getpid(), os.getpid(), 0, "bench", cap_sys_admin=True))
    dispatcher = create_dispatcher()
    args = bytes(defs.drm_get_cap(capability=DRM_CAP_TIMESTAMP_MONOTONIC))
    user = UserMemory(os.getpid())
    cmd = defs.DRM_IOCTL_GET_CAP
    results = {NO_HOOK: _time(lambda: dispatcher._dispatch(file, cmd, args, user), calls),
               HOOK_OFF: _time(lambda: dispatcher.dispatch(file, cmd, args, user), calls)}
    reader = TraceReader(Tracer(), tgid=0, pending=None, notify_poll=None, limit=calls * 2)
    try:
        results[HOOK_ON] = _time(lambda: dispatcher.dispatch(file, cmd, args, user), calls)
    finally:
        reader.release()
    return {label: summarise(values) for label, values in results.items()}


def table(title: str, rows: dict[str, Latency], baseline: str) -> list[str]:
    base = rows[baseline].p50_us
    lines = [title, f"{'':{LABEL_WIDTH}}{'p50':>9}{'p99':>9}{TIMES + ' first row':>14}"]
    for label, cell in rows.items():
        lines.append(f"{label:{LABEL_WIDTH}}{cell.p50_us:9.2f}{cell.p99_us:9.2f}{cell.p50_us / base:14.3f}")
    return lines


def run(quick: bool) -> int:
    calls, rounds = (QUICK_CALLS, QUICK_ROUNDS) if quick else (CALLS, ROUNDS)
    print(f"{calls * rounds} timed GET_CAP calls per state through the mount, {rounds} rounds; "
          f"{IN_PROCESS_CALLS // (10 if quick else 1)} in-process dispatches per row", flush=True)
    try:
        mounted = round_trips(calls, rounds)
    except (DaemonStartError, RuntimeError, OSError) as e:
        print(f"no daemon measurement: {e}")
        return 1
    print("\n".join(["", *table("ioctl round trip through the mount (Python client), µs", mounted, NEVER)]))
    alone = dispatcher_alone(IN_PROCESS_CALLS // (10 if quick else 1))
    print("\n".join(["", *table("the dispatcher alone, in-process (no FUSE), µs", alone, NO_HOOK)]))
    off_cost = alone[HOOK_OFF].p50_us - alone[NO_HOOK].p50_us
    print(f"\ntracing off costs {off_cost * 1000:.0f} ns per ioctl in the dispatcher, "
          f"{off_cost / mounted[NEVER].p50_us:.2%} of a round trip through the mount")
    return 0
