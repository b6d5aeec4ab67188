"""`emudev explore`: run a client program against fresh devices under many scheduling seeds.

Each run mounts a new daemon in deterministic mode (`--sched-seed N`, checkers on), runs
the command with EMUDEV_MOUNT pointing at it, and records the exit status and what the
checkers found. A seed that fails replays the same interleaving when given again.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from emudev.testing import MountedEmudev

RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class SeedResult:
    seed: int
    returncode: int
    violations: str

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or bool(self.violations)


def run_seed(seed: int, command: list[str], devices: int, extra_args: tuple[str, ...] = ()) -> SeedResult:
    with MountedEmudev(devices=devices, extra_args=("--sched-seed", str(seed), *extra_args)) as mount:
        env = dict(os.environ, EMUDEV_MOUNT=mount.mountpoint, EMUDEV_SCHED_SEED=str(seed))
        try:
            returncode = subprocess.run(command, env=env, timeout=RUN_TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            returncode = -1
        return SeedResult(seed, returncode, mount.violations())


def explore(command: list[str], seeds: range, devices: int) -> list[SeedResult]:
    results = []
    for seed in seeds:
        result = run_seed(seed, command, devices)
        verdict = "FAILED" if result.failed else "ok"
        print(f"seed {seed}: exit {result.returncode}, {verdict}", flush=True)
        if result.violations:
            print(result.violations, flush=True)
        results.append(result)
    return results
