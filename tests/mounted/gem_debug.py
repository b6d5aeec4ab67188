"""debug/accelN/gem_objects as data: what the daemon holds, for tests that check lifetimes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(yes|no)\s+(yes|no)\s*(\S*)$")
_TOTAL = re.compile(r"^total: (\d+) objects, (\d+) bytes; device memory (\d+) of (\d+) bytes in use$")


@dataclass(frozen=True)
class GemRow:
    id: int
    size: int
    handles: int
    name: int
    exported: bool
    backed: bool
    holders: dict[str, int]


@dataclass(frozen=True)
class GemObjects:
    rows: list[GemRow]
    objects: int
    bytes: int
    used: int
    capacity: int
    text: str

    @property
    def sizes(self) -> list[int]:
        """One per live BO, ascending."""
        return sorted(row.size for row in self.rows)

    @property
    def handles(self) -> dict[int, int]:
        """Size -> handle count, for tests whose BOs have distinct sizes."""
        return {row.size: row.handles for row in self.rows}

    def by_size(self, size: int) -> GemRow | None:
        return next((row for row in self.rows if row.size == size), None)


def gem_objects(mount, index: int = 0) -> GemObjects:
    text = mount.debug(f"accel{index}", "gem_objects")
    lines = text.splitlines()
    rows = []
    for line in lines[1:-1]:
        match = _ROW.match(line)
        assert match, f"unparsable gem_objects row {line!r}"
        holders = dict((k, int(n)) for k, n in (h.split(":") for h in match[7].split(",") if h))
        rows.append(GemRow(int(match[1]), int(match[2]), int(match[3]), int(match[4]), match[5] == "yes",
                           match[6] == "yes", holders))
    total = _TOTAL.match(lines[-1])
    assert total, f"unparsable gem_objects total {lines[-1]!r}"
    objects, size, used, capacity = map(int, total.groups())
    assert objects == len(rows), text
    return GemObjects(rows, objects, size, used, capacity, text)


def wait_gem(mount, condition: Callable[[GemObjects], bool], timeout: float = 3.0, index: int = 0) -> GemObjects:
    """Poll gem_objects until `condition` holds (file releases reach the daemon after close returns)."""
    deadline = time.monotonic() + timeout
    while True:
        state = gem_objects(mount, index)
        if condition(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"gem_objects of accel{index} after {timeout}s:\n{state.text}")
        time.sleep(0.005)


def idle(state: GemObjects) -> bool:
    return state.objects == 0 and state.used == 0
