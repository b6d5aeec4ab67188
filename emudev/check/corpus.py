"""`python -m emudev.check.corpus [DIR ...]`: run the seeded-bug programs and check the
toolkit flags each one.

Every program in examples/bugs/ carries one classic userspace bug and declares what
must be reported, `EXPECT = (kind, words)`. Each runs alone against a fresh device with
the checkers on; it passes when debug/checks holds a finding of that kind whose message
contains the words.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from emudev.testing import MountedEmudev

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "examples" / "bugs"
PROGRAM_TIMEOUT_S = 60
JOB_TIMEOUT_MS = "300"  # a deadlocked example should not hold the corpus up for long


@dataclass(frozen=True)
class Outcome:
    program: Path
    kind: str
    words: str
    findings: list[str]

    @property
    def flagged(self) -> list[str]:
        return [f for f in self.findings if f.startswith(f"[{self.kind}]") and self.words in f]


def expectation(program: Path) -> tuple[str, str]:
    """The program's EXPECT = (kind, words), read without running it."""
    for node in ast.parse(program.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EXPECT" for t in node.targets):
            kind, words = ast.literal_eval(node.value)
            return kind, words
    raise ValueError(f"{program} declares no EXPECT = (kind, words)")


def findings(checks: str) -> list[str]:
    """debug/checks as one string per finding (its message and chain)."""
    result: list[str] = []
    for line in checks.splitlines():
        if line.startswith("["):
            result.append(line)
        elif line.startswith("    ") and result:
            result[-1] += "\n" + line
    return result


def run(program: Path) -> Outcome:
    kind, words = expectation(program)
    with MountedEmudev(extra_args=("--job-timeout", JOB_TIMEOUT_MS)) as mount:
        env = dict(os.environ, EMUDEV_MOUNT=mount.mountpoint)
        subprocess.run([sys.executable, str(program)], env=env, timeout=PROGRAM_TIMEOUT_S, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return Outcome(program, kind, words, findings(mount.debug("checks")))


def programs(directories: list[Path]) -> list[Path]:
    return sorted(p for d in directories for p in d.glob("*.py"))


def main(argv: list[str] | None = None) -> int:
    directories = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or [DEFAULT_DIR]
    missed = 0
    for program in programs(directories):
        outcome = run(program)
        if outcome.flagged:
            print(f"flagged  {program.name}: {outcome.flagged[0].splitlines()[0]}")
        else:
            missed += 1
            print(f"MISSED   {program.name}: expected [{outcome.kind}] ... {outcome.words!r}; found:")
            print("\n".join("    " + f.splitlines()[0] for f in outcome.findings) or "    nothing")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
