"""Compile the benchmarks' C helpers at run time into benchmarks/build/ (git-ignored)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = SOURCE_DIR / "build"


class BuildError(RuntimeError):
    """A helper that could not be compiled; the message says why, for the table's notes."""


def _pkg_config(packages: tuple[str, ...]) -> list[str]:
    if not packages:
        return []
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", *packages], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"pkg-config {' '.join(packages)} failed: {_reason(e)}") from e
    return shlex.split(out)


def _reason(error: OSError | subprocess.CalledProcessError) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        return (error.stderr or "").strip() or f"exit status {error.returncode}"
    return str(error)


def build_c(source: str, packages: tuple[str, ...] = ()) -> Path:
    """Compile benchmarks/SOURCE with gcc -O2, skipping the work when the binary is up to date."""
    src = SOURCE_DIR / source
    binary = BUILD_DIR / src.stem
    if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    BUILD_DIR.mkdir(exist_ok=True)
    cmd = ["gcc", "-O2", "-Wall", "-o", str(binary), str(src), *_pkg_config(packages)]
    try:
        subprocess.run(cmd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"cannot build {source}: {_reason(e)}") from e
    return binary
