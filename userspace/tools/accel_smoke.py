"""accel-smoke: many processes use every device at once and must all see the same device.

A quick end-to-end check that the uapi works from concurrent clients: each worker
opens every node, names its file, and repeats the queries; then it moves data through
a BO (written through its dma-buf mapping, read back through the device-fd mapping)
and round-trips a syncobj. The answers must agree and the ioctl rate is reported.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import sys
import time

import numpy as np

from userspace.libaccel import Device, DeviceInfo, abs_timeout, find_devices


def _worker(args: tuple[int, list[str], int]) -> tuple[list[DeviceInfo], int, float]:
    index, paths, rounds = args
    start = time.perf_counter()
    calls = 0
    infos = []
    devices = [Device(p) for p in paths]
    try:
        for dev in devices:
            dev.set_client_name(f"accel-smoke-{index}")
        for _ in range(rounds):
            infos = [dev.info() for dev in devices]
            calls += len(devices) * (4 + 6 + 2)
        for dev in devices:
            _buffers_and_fences(dev, index)
    finally:
        for dev in devices:
            dev.close()
    return infos, calls, time.perf_counter() - start


def _buffers_and_fences(dev: Device, index: int) -> None:
    """Data through a BO by both CPU paths, and a syncobj signalled and waited on."""
    pattern = np.arange(1 << 20, dtype=np.uint8) ^ index
    with dev.create_bo(pattern.size) as bo:
        with bo.cpu_access() as view:
            view[:] = pattern
        bo.prep(write=False)
        if not np.array_equal(bo.map_device(), pattern):
            raise OSError(errno.EIO, "the device-fd mapping does not show what the dma-buf mapping wrote")
        bo.fini()
    with dev.create_syncobj() as syncobj:
        syncobj.signal()
        syncobj.wait(timeout_ns=abs_timeout(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="accel-smoke", description="Concurrent clients querying every device.")
    p.add_argument("--mount", help="emudev mountpoint (default $EMUDEV_MOUNT, then /dev/accel)")
    p.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    p.add_argument("--rounds", type=int, default=50, help="query rounds per client (default 50)")
    args = p.parse_args(argv)
    paths = find_devices(args.mount)
    if not paths:
        print("accel-smoke: no accel devices found", file=sys.stderr)
        return 1
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.clients) as pool:
        try:
            results = pool.map(_worker, [(i, paths, args.rounds) for i in range(args.clients)])
        except OSError as e:
            print(f"accel-smoke: a client failed: {e}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - start
    reference = results[0][0]
    disagreeing = [i for i, (infos, _, _) in enumerate(results) if infos != reference]
    calls = sum(c for _, c, _ in results)
    print(f"accel-smoke: {args.clients} clients x {len(paths)} device(s) x {args.rounds} rounds: "
          f"{calls} ioctls in {elapsed:.2f}s ({calls / elapsed:.0f}/s)")
    if disagreeing:
        print(f"accel-smoke: clients {disagreeing} saw different answers", file=sys.stderr)
        return 1
    print("accel-smoke: all clients agree")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
