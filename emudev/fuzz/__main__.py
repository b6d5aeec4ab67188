"""``python -m emudev.fuzz``: fuzz the uapi of a fresh daemon for long, then print what happened.

The long run of ``make fuzz``: batches of random (not derandomized) examples until
``--examples`` or ``--seconds`` is reached, then the table of calls and answers per
ioctl, the daemon's growth and every finding. Exit status 1 on a finding; the failing
example's steps, as hypothesis shrank them, are printed above the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from emudev.fuzz.known import KNOWN_BUGS
from emudev.fuzz.machine import UapiMachine
from emudev.fuzz.session import FuzzEnv, warm_up

BATCH = 50


def run(env: FuzzEnv, examples: int, seconds: float | None, steps: int, keep_going: bool) -> bool:
    """Batches of examples until either bound; False if one failed. A failed batch prints the
    shrunk steps; with `keep_going` the next batch starts on a fresh daemon."""
    start = time.monotonic()
    ok = True
    UapiMachine.env = env
    try:
        while env.stats.examples < examples and (seconds is None or time.monotonic() - start < seconds):
            batch = min(BATCH, examples - env.stats.examples)
            try:
                run_state_machine_as_test(UapiMachine, settings=settings(
                    max_examples=batch, stateful_step_count=steps, derandomize=False, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=True))
            except Exception as e:
                traceback.print_exception(e)
                ok = False
                if not keep_going:
                    break
    finally:
        UapiMachine.env = None
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emudev.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=int(os.environ.get("FUZZ_EXAMPLES") or 20000),
                        help="examples (state machine runs) at most (default $FUZZ_EXAMPLES or 20000)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS") or 0) or None,
                        help="stop after this long (default $FUZZ_SECONDS, or no limit)")
    parser.add_argument("--steps", type=int, default=50, help="steps per example at most (default 50)")
    parser.add_argument("--devices", type=int, default=2, help="devices to mount (default 2)")
    parser.add_argument("--stop", action="store_true", help="stop at the first failure (default: go on)")
    parser.add_argument("--all-bugs", action="store_true",
                        help="also trigger the known bugs (emudev/fuzz/known.py) instead of avoiding them")
    args = parser.parse_args(argv)
    env = FuzzEnv(devices=args.devices, known=() if args.all_bugs else KNOWN_BUGS)
    started = time.monotonic()
    try:
        env.start()
        warm_up(env)
        ok = run(env, args.examples, args.seconds, args.steps, not args.stop)
        elapsed = time.monotonic() - started
        print(env.stats.summary(elapsed))
        if env.start_health is not None and env.alive():
            now = env.health()
            print(f"\ndaemon: RSS {env.start_health.rss >> 20} -> {now.rss >> 20} MiB, threads "
                  f"{env.start_health.threads} -> {now.threads}, fds {env.start_health.fds} -> {now.fds}, "
                  f"restarts {env.restarts}")
    finally:
        env.close()
    return 0 if ok and not env.stats.findings else 1


if __name__ == "__main__":
    sys.exit(main())
