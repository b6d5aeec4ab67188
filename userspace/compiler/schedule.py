"""Scheduling: command streams with the cross-engine ordering the device needs.

The device runs each engine's packets in stream order but different engines concurrently,
so a kernel must wait for every earlier kernel on another engine whose bytes it reads
or writes (read-after-write, write-after-read and write-after-write, the last two coming
from arena reuse and concat slices). The scheme:

* the arena starts with one u32 counter per engine; the runtime zeroes them (CPU write
  between BO_PREP and BO_FINI) before the first job of every run, while the BO is idle;
* kernels are numbered per engine (1, 2, ...) over the whole run; after a kernel that a
  later kernel on another engine depends on, its engine runs SEM_SIGNAL SET counter = n;
* before the dependent kernel, its engine runs SEM_WAIT counter >= n.

Counters only grow within a run, so SET and GEQUAL are enough and no wait can be satisfied
by a stale value. Redundant waits are dropped with vector clocks: each engine tracks how
far it knows every other engine has progressed (directly or through what it waited on),
and a wait it already knows satisfied is not emitted. Every wait names a signal earlier in
the stream, so the schedule cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emudev.uapi import defs
from userspace.compiler.kernels import ENGINE_COUNT, Addresses, Kernel, resolve
from userspace.compiler.layout import views_overlap
from userspace.compiler.plan import PROFILE_STAMP_BYTES
from userspace.libaccel.job import CommandStream


@dataclass
class Stream:
    """One job's command stream and, for each of its packets, the kernel it belongs to."""

    data: bytes
    packet_kernels: list[int]  # kernel index per packet, -1 for none

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class ScheduleStats:
    packets: int = 0
    waits: int = 0
    signals: int = 0
    jobs: int = 0


def _conflict(a: Kernel, b: Kernel) -> bool:
    for w in a.writes:
        if any(views_overlap(w, v) for v in (*b.reads, *b.writes)):
            return True
    return any(views_overlap(r, w) for r in a.reads for w in b.writes)


def schedule(kernels: Sequence[Kernel], addresses: Addresses, semaphore_va: int, max_cmd_size: int,
             timestamp_va: int = 0, max_job_seconds: float = 0.0) -> tuple[list[Stream], ScheduleStats]:
    """The jobs' command streams, in submission order."""
    stats = ScheduleStats()
    done = [0] * ENGINE_COUNT  # packets numbered per engine over the whole run
    known = [list(done) for _ in range(ENGINE_COUNT)]  # known[F][E]: F knows E finished its first n kernels
    snapshots: dict[tuple[int, int], list[int]] = {}  # (E, n) -> what E knew right after its kernel n
    by_engine: list[list[tuple[int, Kernel]]] = [[] for _ in range(ENGINE_COUNT)]  # (ordinal, kernel)
    entries: list[tuple[Kernel, list[bytes], list[bytes]]] = []  # (kernel, packets, signals after it)
    entry_of: dict[tuple[int, int], int] = {}  # (E, n) -> entries index of E's kernel n
    waited: set[tuple[int, int]] = set()
    for kernel in kernels:
        f = kernel.engine
        head: list[bytes] = []
        for e in range(ENGINE_COUNT):
            if e == f:
                continue
            need = 0
            for ordinal, other in reversed(by_engine[e]):
                if ordinal <= known[f][e]:
                    break
                if _conflict(kernel, other):
                    need = ordinal
                    break
            if not need:
                continue
            head.append(_packet("SEM_WAIT", engine=f, cond=defs.DRM_EMUDEV_SEM_GEQUAL, va=semaphore_va + 4 * e,
                                value=need))
            stats.waits += 1
            known[f] = [max(a, b) for a, b in zip(known[f], snapshots[(e, need)], strict=True)]
            waited.add((e, need))
        done[f] += 1
        ordinal = done[f]
        known[f][f] = ordinal
        snapshots[(f, ordinal)] = list(known[f])
        by_engine[f].append((ordinal, kernel))
        body = [_packet(kernel.packet, **resolve(kernel, addresses))]
        if timestamp_va:  # right around the packet, after its waits: the stamps time the work alone
            stamps = timestamp_va + PROFILE_STAMP_BYTES * kernel.index
            body = [_packet("TIMESTAMP", engine=f, va=stamps), *body, _packet("TIMESTAMP", engine=f, va=stamps + 8)]
        entry_of[(f, ordinal)] = len(entries)
        entries.append((kernel, head + body, []))
    for engine, ordinal in sorted(waited):
        entries[entry_of[(engine, ordinal)]][2].append(_packet(
            "SEM_SIGNAL", engine=engine, op=defs.DRM_EMUDEV_SEM_SET, va=semaphore_va + 4 * engine, value=ordinal))
        stats.signals += 1
    streams = _split(entries, max_cmd_size, max_job_seconds, stats)
    stats.jobs = len(streams)
    return streams, stats


def _packet(name: str, **fields: object) -> bytes:
    return CommandStream().packet(name, **fields).bytes()


def _split(entries: list[tuple[Kernel, list[bytes], list[bytes]]], max_cmd_size: int, max_job_seconds: float,
           stats: ScheduleStats) -> list[Stream]:
    """Streams of at most max_cmd_size bytes and about max_job_seconds of estimated work, cut between
    kernels: jobs of a context run in order and the counters carry over, so every wait stays valid."""
    streams: list[Stream] = []
    data: list[bytes] = []
    owners: list[int] = []
    size, seconds = 0, 0.0
    for kernel, packets, signals in entries:
        chunk = [*packets, *signals]
        chunk_size = sum(len(p) for p in chunk)
        too_long = max_job_seconds and seconds + kernel.cost > max_job_seconds
        if size and (size + chunk_size > max_cmd_size or too_long):
            streams.append(Stream(b"".join(data), owners))
            data, owners, size, seconds = [], [], 0, 0.0
        data.extend(chunk)
        owners.extend([kernel.index] * len(chunk))
        size += chunk_size
        seconds += kernel.cost
        stats.packets += len(chunk)
    if data:
        streams.append(Stream(b"".join(data), owners))
    return streams
