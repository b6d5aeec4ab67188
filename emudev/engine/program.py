"""A validated command stream: the packets of a job, each with its engine and the
device memory it reads and writes.

SUBMIT builds it once; the engines run it, and the accesses are what implicit sync,
the fault checks and later tooling reason about.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from emudev.uapi import defs


@dataclass(frozen=True)
class Access:
    """`length` bytes at device address `va`, read or written, named for messages."""

    va: int
    length: int
    write: bool
    what: str


@dataclass(frozen=True)
class Step:
    """One packet as an engine runs it."""

    index: int
    offset: int
    engine: int
    name: str
    packet: defs.UapiStruct
    accesses: tuple[Access, ...]


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]

    def engines(self) -> frozenset[int]:
        return frozenset(step.engine for step in self.steps)

    @cached_property
    def work(self) -> tuple[Step, ...]:
        """The packets an engine has to run, in stream order: a NOP needs none. Worked out
        once per program, and programs are cached by their stream, so not on every SUBMIT."""
        return tuple(step for step in self.steps if step.name != "NOP")

    @cached_property
    def per_engine(self) -> dict[int, tuple[Step, ...]]:
        """`work` split into each engine's queue, each in stream order (read-only)."""
        queues: dict[int, list[Step]] = {}
        for step in self.work:
            queues.setdefault(step.engine, []).append(step)
        return {engine: tuple(steps) for engine, steps in queues.items()}


ENGINE_NAMES = {value: name.removeprefix("DRM_EMUDEV_ENGINE_").lower()
                for name, value in defs.ENUMS["drm_emudev_engine"].members.items()}
