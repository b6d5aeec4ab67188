"""Daemon bugs the fuzzer found and that are not fixed yet.

Each has a strict-xfail reproducer in tests/mounted/test_fuzz_uapi.py. While a bug is
listed here the fuzzer keeps the suite green: an answer matching `matches` is counted
(`Stats.known`) instead of failing, and `avoid` names a trigger the generators leave
out (a crash cannot be tolerated after the fact: the daemon is gone). Remove an entry
once its reproducer passes (strict xfail then fails the suite, as a reminder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from emudev.fuzz.errnos import Expectation
from emudev.fuzz.plan import BUFFER, CallPlan, CallResult, get_int, put_int
from emudev.uapi import defs

# Triggers the generators can leave out.
BLOCKING_SEM_WAIT = "blocking-sem-wait"  # a SEM_WAIT whose condition is not already true
SYNC_START_WAIT = "sync-start-wait"  # DMA_BUF_IOCTL_SYNC START (without END) on a dma-buf

# Calls that block by design, which the fuzzer does not make: a SEM_WAIT nobody satisfies holds
# the ring until the job timeout, and DMA_BUF_IOCTL_SYNC START waits for the buffer's fences
# with no timeout (dma_buf_begin_cpu_access), which a fence nobody signals makes endless.
BY_DESIGN = frozenset({BLOCKING_SEM_WAIT, SYNC_START_WAIT})


_SYNC = defs.IOCTLS_BY_NAME["DMA_BUF_IOCTL_SYNC"]


def _never(plan: CallPlan, result: CallResult, expect: Expectation) -> bool:
    return False


@dataclass(frozen=True)
class KnownBug:
    """A bug by name, what it is, which wrong answers are it (`matches`), which trigger to avoid."""

    name: str
    description: str
    matches: Callable[[CallPlan, CallResult, Expectation], bool] = _never
    avoid: str | None = None


KNOWN_BUGS: tuple[KnownBug, ...] = ()


def no_waiting_sync(plan: CallPlan) -> CallPlan:
    """A well-formed DMA_BUF_IOCTL_SYNC START on a dma-buf is sent as END (see BY_DESIGN)."""
    if plan.ioctl != _SYNC.name or plan.kind != "dma_buf" or plan.cmd != _SYNC.cmd or plan.arg_kind != BUFFER:
        return plan
    flags = get_int(plan.arg, 0, 8)
    if flags & ~defs.DMA_BUF_SYNC_VALID_FLAGS_MASK or not flags & defs.DMA_BUF_SYNC_RW or flags & defs.DMA_BUF_SYNC_END:
        return plan
    arg = bytearray(plan.arg)
    put_int(arg, 0, 8, flags | defs.DMA_BUF_SYNC_END)
    return replace(plan, arg=bytes(arg))


def avoided(bugs: tuple[KnownBug, ...] = KNOWN_BUGS) -> frozenset[str]:
    """The triggers to leave out: blocking calls, and those of the `bugs` still open."""
    return BY_DESIGN | frozenset(bug.avoid for bug in bugs if bug.avoid)
