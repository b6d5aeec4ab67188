"""Violations: what a checker found, with the chain of events that explains it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from emudev.sync.fence import now_ns

log = logging.getLogger("emudev.check")

LIMIT = 1000


@dataclass(frozen=True)
class Violation:
    """`kind` groups (fence-order, deadlock, race, cpu-access); `message` names the bug and
    the place; `chain` lists the events or cycle members behind it, cause first."""

    kind: str
    message: str
    chain: tuple[str, ...]
    time_ns: int

    def text(self) -> str:
        lines = [f"[{self.kind}] {self.message}"]
        lines += [f"    {link}" for link in self.chain]
        return "\n".join(lines)


class Report:
    def __init__(self, level: int = logging.WARNING) -> None:
        self.level = level
        self._violations: list[Violation] = []
        self._dropped = 0
        self._lock = threading.Lock()

    def add(self, kind: str, message: str, chain: list[str] | tuple[str, ...] = ()) -> None:
        violation = Violation(kind, message, tuple(chain), now_ns())
        with self._lock:
            if len(self._violations) < LIMIT:
                self._violations.append(violation)
            else:
                self._dropped += 1
        log.log(self.level, "%s", violation.text())

    def violations(self) -> list[Violation]:
        with self._lock:
            return list(self._violations)

    def text(self) -> str:
        with self._lock:
            body = "\n".join(v.text() for v in self._violations)
            dropped = f"\n... {self._dropped} more not kept\n" if self._dropped else ""
        return (body + "\n" if body else "") + dropped
