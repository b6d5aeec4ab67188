"""`python -m benchmarks [--only NAME] [--quick]`: run every benchmark module in turn."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

import benchmarks
from emudev.launch import let_blas_threads_sleep


def discover() -> list[str]:
    """Benchmark names, found rather than listed so that a new module needs no registration."""
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def run_one(name: str, quick: bool) -> int:
    """Run one benchmark; a crash is reported and counted but does not stop the others."""
    print(f"== {name} ==", flush=True)
    try:
        return importlib.import_module(f"benchmarks.{name}").run(quick=quick)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        print(flush=True)


def main(argv: list[str] | None = None) -> int:
    let_blas_threads_sleep()  # as the daemon does: numpy timed here must not starve it of a CPU
    names = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Run every benchmark of this package in turn.")
    parser.add_argument("--only", metavar="NAME", choices=names,
                        help=f"run one benchmark: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    selected = [args.only] if args.only else names
    return max(run_one(name, args.quick) for name in selected)


if __name__ == "__main__":
    sys.exit(main())
