"""The `emudev` command's entry: what the daemon's process must set before numpy loads, then the CLI.

OpenBLAS's threads spin for 2^28 cycles (about 0.1 s) after every matrix product before they sleep.
In a daemon serving jobs that kept both CPUs of a 2-vCPU machine busy after each run: onnxruntime's
SqueezeNet beside it went from 4 to 8-24 ms right after a device run, and the daemon burned 30-40% more
CPU per run, for no measurable gain in the device's own latency. 2^18 cycles (about 0.1 ms) still
bridges the packets of one job. A value the user has set is kept.
"""

from __future__ import annotations

import os

BLAS_SPIN_CYCLES_LOG2 = "18"


def let_blas_threads_sleep() -> None:
    """Make OpenBLAS's idle threads sleep after about 0.1 ms; call it before numpy is imported.

    The benchmarks call it too: a process that times numpy beside the daemon must neither keep a
    CPU spinning while the daemon computes nor time its own calls with threads kept hotter than
    the daemon's."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN_CYCLES_LOG2)


def main() -> int:
    let_blas_threads_sleep()
    from emudev.cli import main as cli_main

    return cli_main()
