"""What a fuzzing run did and found: calls and errnos per ioctl, what was broken, findings."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from emudev.fuzz.errnos import errno_name


@dataclass(frozen=True)
class Finding:
    """A daemon bug: an errno the kernel could not return, a crash, a hang, a leak, an exception in the log."""

    kind: str
    ioctl: str
    detail: str
    request: str = ""

    def __str__(self) -> str:
        text = f"[{self.kind}] {self.ioctl}: {self.detail}"
        return f"{text}\n    request: {self.request}" if self.request else text


@dataclass
class Stats:
    """Counters shared by every example of a run."""

    calls: Counter[str] = field(default_factory=Counter)
    errnos: dict[str, Counter[str]] = field(default_factory=dict)
    broken: Counter[str] = field(default_factory=Counter)
    slowest: dict[str, float] = field(default_factory=dict)
    known: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    examples: int = 0
    steps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, ioctl: str, err: int, elapsed: float, labels: tuple[str, ...]) -> None:
        name = errno_name(err) if err else "ok"
        with self._lock:
            self.calls[ioctl] += 1
            self.errnos.setdefault(ioctl, Counter())[name] += 1
            for label in labels:
                self.broken[label.split("[")[0].split(":")[0]] += 1
            if elapsed > self.slowest.get(ioctl, 0.0):
                self.slowest[ioctl] = elapsed

    def add(self, finding: Finding) -> None:
        with self._lock:
            if all(str(f) != str(finding) for f in self.findings):
                self.findings.append(finding)

    def summary(self, seconds: float | None = None) -> str:
        """The table `make fuzz` prints: every ioctl, its calls, what it answered, its slowest call."""
        total = sum(self.calls.values())
        rate = f", {total / seconds:.0f} calls/s over {seconds:.0f} s" if seconds else ""
        lines = [f"{self.examples} examples, {self.steps} steps, {total} calls{rate}", "",
                 f"{'ioctl':<34} {'calls':>7} {'max ms':>7}  answers"]
        for name in sorted(self.calls):
            answers = " ".join(f"{e}:{n}" for e, n in sorted(self.errnos[name].items(), key=lambda kv: -kv[1]))
            lines.append(f"{name:<34} {self.calls[name]:>7} {self.slowest[name] * 1000:>7.1f}  {answers}")
        if self.broken:
            lines += ["", "broken on purpose: " + ", ".join(f"{k} {n}" for k, n in self.broken.most_common())]
        if self.known:
            lines += ["", "known bugs seen: " + ", ".join(f"{k} {n}" for k, n in self.known.most_common())]
        lines += ["", f"findings: {len(self.findings)}"] + [str(f) for f in self.findings]
        return "\n".join(lines)
