"""Memory planning: every storage gets an offset in the arena BO or in the weights BO.

Activations share one arena by liveness: a storage is alive from the first kernel touching
it to the last (model inputs from before the first, outputs to after the last), and a
greedy allocator (largest first, lowest offset that overlaps nothing alive at the same
time) places it. Reuse is safe across engines because the scheduler orders every pair of
kernels whose byte ranges overlap, reuse included. Constants are packed once, identical
contents sharing bytes, into the weights BO, which the device may only read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from userspace.compiler.kernels import Kernel
from userspace.compiler.layout import ALIGN, Storage

ALWAYS = 1 << 62
SEMAPHORE_BYTES = 64  # one u32 counter per engine at the start of the arena
PROFILE_STAMP_BYTES = 16  # per kernel when profiling: u64 CLOCK_MONOTONIC before and after its packet


def _align(value: int, align: int = ALIGN) -> int:
    return -(-value // align) * align


@dataclass
class MemoryPlan:
    arena_size: int
    const_size: int
    const_blob: bytes
    semaphore_offset: int
    timestamp_offset: int  # in the arena; -1 without profiling


def plan_memory(kernels: Sequence[Kernel], storages: Sequence[Storage], profile: bool = False) -> MemoryPlan:
    for index, kernel in enumerate(kernels):
        for storage in kernel.storages():
            storage.first = min(storage.first, index)
            storage.last = max(storage.last, index)
    arena = [s for s in storages if s.kind == "arena" and (s.last >= 0 or s.pinned)]
    for storage in arena:
        if storage.pinned:
            storage.first, storage.last = -1, ALWAYS
    header = SEMAPHORE_BYTES + (_align(PROFILE_STAMP_BYTES * len(kernels)) if profile else 0)
    placed: list[Storage] = []
    for storage in sorted(arena, key=lambda s: (-s.nbytes, s.first, s.id)):
        busy = sorted((p.offset, p.offset + p.nbytes) for p in placed
                      if p.first <= storage.last and storage.first <= p.last)
        offset = header
        for low, high in busy:
            if offset + storage.nbytes <= low:
                break
            offset = max(offset, _align(high))
        storage.offset = offset
        placed.append(storage)
    arena_size = max([header, *(_align(s.offset + s.nbytes) for s in placed)])
    blob = bytearray()
    seen: dict[bytes, int] = {}
    for storage in storages:
        if storage.kind != "const":
            continue
        data = storage.data or b""
        key = hashlib.blake2b(data, digest_size=16).digest() + len(data).to_bytes(8, "little")
        if key in seen:
            storage.offset = seen[key]
            continue
        storage.offset = seen[key] = _align(len(blob))
        blob.extend(bytes(storage.offset - len(blob)))
        blob.extend(data)
    return MemoryPlan(arena_size, max(len(blob), 1), bytes(blob), 0, SEMAPHORE_BYTES if profile else -1)
