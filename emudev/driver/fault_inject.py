"""Fault injection, in the spirit of the kernel's fault-injection debugfs knobs.

Written to MOUNT/debug/accelN/inject (or with `emudev inject`), one command per line:

    alloc_fail N        the next N BO allocations fail with ENOMEM
    hang ENGINE         the next packet on ENGINE never ends: the job times out, the engines reset
    slow ENGINE MS      every packet on ENGINE takes MS milliseconds longer
    delay_signal MS     job fences signal MS milliseconds after their job ends
    seed N | seed off   deterministic scheduling: one packet at a time, interleaved by a seeded RNG
    unplug              hot-unplug this device: ioctls ENODEV, open ENXIO, fences -ENODEV
    clear               undo everything but unplug
"""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from emudev.engine.program import ENGINE_NAMES

_ENGINES = {name: number for number, name in ENGINE_NAMES.items()}


class InjectError(ValueError):
    """A command the inject file does not understand; the write fails with EINVAL."""


@dataclass
class FaultInjection:
    """What is currently injected into one device; read by the layers it affects."""

    alloc_failures: int = 0
    hang: set[int] = field(default_factory=set)
    slow_ms: dict[int, int] = field(default_factory=dict)
    signal_delay_ms: int = 0
    seed: int | None = None
    rng: random.Random | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take_alloc_failure(self) -> bool:
        """Whether this allocation is one of those told to fail."""
        with self._lock:
            if self.alloc_failures <= 0:
                return False
            self.alloc_failures -= 1
            return True

    def take_hang(self, engine: int) -> bool:
        with self._lock:
            if engine not in self.hang:
                return False
            self.hang.discard(engine)
            return True

    def apply(self, line: str, unplug: Callable[[], None]) -> None:
        words = line.split()
        if not words:
            return
        command, args = words[0], words[1:]
        handler = _COMMANDS.get(command)
        if handler is None:
            raise InjectError(f"unknown command {command!r}; try: {', '.join(sorted(_COMMANDS))}")
        handler(self, args, unplug)

    def text(self) -> str:
        with self._lock:
            rows = {
                "alloc_fail": self.alloc_failures,
                "hang": " ".join(ENGINE_NAMES[e] for e in sorted(self.hang)) or "-",
                "slow": " ".join(f"{ENGINE_NAMES[e]}:{ms}" for e, ms in sorted(self.slow_ms.items())) or "-",
                "delay_signal": self.signal_delay_ms,
                "seed": "off" if self.seed is None else self.seed,
            }
        return "".join(f"{k}: {v}\n" for k, v in rows.items())


def _count(args: list[str], what: str) -> int:
    if len(args) != 1 or not args[0].isdigit():
        raise InjectError(f"{what} takes one non-negative number")
    return int(args[0])


def _engine(name: str) -> int:
    if name not in _ENGINES:
        raise InjectError(f"unknown engine {name!r}; engines: {', '.join(_ENGINES)}")
    return _ENGINES[name]


def _alloc_fail(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    inj.alloc_failures = _count(args, "alloc_fail")


def _hang(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    if len(args) != 1:
        raise InjectError("hang takes an engine name")
    inj.hang.add(_engine(args[0]))


def _slow(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    if len(args) != 2:
        raise InjectError("slow takes an engine name and milliseconds")
    inj.slow_ms[_engine(args[0])] = _count(args[1:], "slow")


def _delay_signal(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    inj.signal_delay_ms = _count(args, "delay_signal")


def _seed(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    if args == ["off"]:
        inj.seed, inj.rng = None, None
        return
    inj.seed = _count(args, "seed")
    inj.rng = random.Random(inj.seed)


def _unplug(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    if args:
        raise InjectError("unplug takes no argument")
    unplug()


def _clear(inj: FaultInjection, args: list[str], unplug: Callable[[], None]) -> None:
    inj.alloc_failures, inj.signal_delay_ms, inj.seed, inj.rng = 0, 0, None, None
    inj.hang.clear()
    inj.slow_ms.clear()


_COMMANDS: dict[str, Callable[[FaultInjection, list[str], Callable[[], None]], None]] = {
    "alloc_fail": _alloc_fail,
    "hang": _hang,
    "slow": _slow,
    "delay_signal": _delay_signal,
    "seed": _seed,
    "unplug": _unplug,
    "clear": _clear,
}


def enomem() -> OSError:
    return OSError(errno.ENOMEM, "allocation failed by fault injection")
