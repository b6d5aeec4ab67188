"""CPU bandwidth through each way of mapping a BO, next to a plain memcpy in the same run.

A client fills a BO with input and reads results back through a CPU mapping, so a mapping that
is much slower than memory is a cost on every job. The default libaccel path maps the BO's own
pages (a dma-buf with FUSE passthrough) and should come close to memcpy; the device-fd mapping
goes through the FUSE page cache (pages fault in by FUSE READ, FINI writes them back), so it is
expected to be far slower and is measured to know by how much.

Each pass writes the whole buffer from an anonymous source array and then reads it back into
another, each inside its own CPU-access bracket as a client writing input and reading results
would; bandwidth counts both directions. Passes of all paths are interleaved so that drift on a
shared VM hits every row alike. The first pass of each path is untimed and checks that the data
round-trips, read back through the same mapping and through a second one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np

from emudev.testing import DaemonStartError, MountedEmudev
from emudev.uapi import defs
from userspace.libaccel import Device
from userspace.libaccel.bo import Bo

SIZE = 64 << 20
QUICK_SIZE = 16 << 20
REPS = 5
QUICK_REPS = 2
TARGET = 0.5
SEED = 20240607
LABEL_WIDTH = 58
TIMES = "\N{MULTIPLICATION SIGN}"

Bracket = Callable[[bool], AbstractContextManager[np.ndarray]]
"""Given whether the CPU will write, bracket one access and give the array to access."""


@dataclass(frozen=True)
class Pass:
    """One write-then-read pass: all of it, and only the two copies (no bracket calls)."""

    total_ns: int
    copy_ns: int


@dataclass
class Path:
    """One row's findings; it holds no mapping, so it outlives the daemon harmlessly."""

    label: str
    copies_label: str | None = None
    """The label of a second row showing the copies alone, for the path where the brackets' cost matters."""
    passes: list[Pass] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    """Data that did not round-trip: the numbers of such a path measure a broken mapping."""
    error: str | None = None
    """Why the path stopped being measured (a failed mmap, an ioctl error)."""
    checked: bool = False

    @property
    def stopped(self) -> bool:
        return self.error is not None or bool(self.mismatches)


@dataclass(frozen=True)
class Subject:
    """A path being measured: its bracket and mapping, and its BO (None for the anonymous reference)."""

    path: Path
    bracket: Bracket
    bo: Bo | None = None


# the paths

def plain(array: np.ndarray) -> Bracket:
    """Anonymous memory needs no bracket: the reference does the same copies with nothing around them."""

    @contextmanager
    def bracket(write: bool) -> Iterator[np.ndarray]:
        yield array

    return bracket


def mapped_once(bo: Bo, stack: ExitStack) -> Bracket:
    """The default path as a client keeping its mapping: bo.map() once, cpu_access() around each use."""
    view = bo.map()

    @contextmanager
    def bracket(write: bool) -> Iterator[np.ndarray]:
        with bo.cpu_access(write):
            yield view

    return bracket


def helper_view(bo: Bo, stack: ExitStack) -> Bracket:
    """The array cpu_access() itself yields: a new mapping of the dma-buf per access."""
    return bo.cpu_access


def device_fd(bo: Bo, stack: ExitStack) -> Bracket:
    """mmap of the device fd, kept; BO_PREP/BO_FINI make the page cache and device memory agree."""
    view = bo.map_device()

    @contextmanager
    def bracket(write: bool) -> Iterator[np.ndarray]:
        bo.prep(write)
        try:
            yield view
        finally:
            bo.fini()

    return bracket


def dma_buf(bo: Bo, stack: ExitStack) -> Bracket:
    """The dma-buf's own mapping, kept, with DMA_BUF_IOCTL_SYNC START/END in the access's direction."""
    dmabuf = stack.enter_context(bo.export())
    view = dmabuf.map()

    @contextmanager
    def bracket(write: bool) -> Iterator[np.ndarray]:
        direction = defs.DMA_BUF_SYNC_WRITE if write else defs.DMA_BUF_SYNC_READ
        dmabuf.sync(defs.DMA_BUF_SYNC_START | direction)
        try:
            yield view
        finally:
            dmabuf.sync(defs.DMA_BUF_SYNC_END | direction)

    return bracket


Factory = Callable[[Bo, ExitStack], Bracket]
"""Sets a path up on its BO; anything else it opens goes on the stack, closed with the BOs."""

REFERENCE = "memcpy: anonymous → anonymous (reference)"
DEFAULT = "default: bo.map() in `with bo.cpu_access():`"


def bo_paths() -> list[tuple[Path, Factory]]:
    """The rows under the reference; the default path is the one the target is about."""
    return [
        (Path(DEFAULT, copies_label="  the same, copies only (PREP/FINI excluded)"), mapped_once),
        (Path("default: the array `with bo.cpu_access() as a` maps"), helper_view),
        (Path("device fd: bo.map_device(), bo.prep() / bo.fini()"), device_fd),
        (Path("dma-buf: bo.export().map(), SYNC START / END"), dma_buf),
    ]


def open_subject(path: Path, factory: Factory, dev: Device, size: int, stack: ExitStack) -> Subject | None:
    """A BO of its own per path, so that no path's mapping or cached pages can serve another's."""
    try:
        bo = stack.enter_context(dev.create_bo(size))
        return Subject(path, factory(bo, stack), bo)
    except OSError as e:
        path.error = f"setting up: {type(e).__name__}: {e}"
        return None


# measuring

def timed_pass(bracket: Bracket, src: np.ndarray, tmp: np.ndarray) -> Pass:
    clock = time.perf_counter_ns
    start = clock()
    with bracket(True) as view:
        t0 = clock()
        view[:] = src
        copy_ns = clock() - t0
    with bracket(False) as view:
        t0 = clock()
        np.copyto(tmp, view)
        copy_ns += clock() - t0
    return Pass(clock() - start, copy_ns)


def mismatch(got: np.ndarray, want: np.ndarray) -> str | None:
    """None if equal, else how many bytes differ and where the first one is."""
    differ = np.flatnonzero(got != want)
    if not differ.size:
        return None
    first = int(differ[0])
    return (f"{differ.size} of {want.size} bytes differ, first at offset {first:#x} "
            f"(read {got[first]:#04x}, wrote {want[first]:#04x})")


def check_round_trip(subject: Subject, src: np.ndarray, tmp: np.ndarray) -> None:
    """Write and read back once (the warm-up pass); then look at the BO through a second dma-buf mapping.

    `tmp` is cleared first, so that a read that silently did nothing cannot pass with the data
    of the path checked before.
    """
    mismatches = subject.path.mismatches
    tmp.fill(0)
    timed_pass(subject.bracket, src, tmp)
    if (problem := mismatch(tmp, src)) is not None:
        mismatches.append(f"read back through the same mapping: {problem}")
    if subject.bo is not None:
        check_second_mapping(subject.bo, src, mismatches)
    subject.path.checked = True


def check_second_mapping(bo: Bo, src: np.ndarray, mismatches: list[str]) -> None:
    """Device memory itself, through a new dma-buf mapping (passthrough to the BO's pages), not the path's own."""
    with bo.export() as second, second.cpu_access(write=False) as view:
        if (problem := mismatch(view, src)) is not None:
            mismatches.append(f"read through a second mapping (a new dma-buf mmap): {problem}")


def attempt(subject: Subject, action: Callable[[Subject], None]) -> None:
    """One step of a path; an error ends that path's measurement and is reported under the table."""
    if subject.path.stopped:
        return
    try:
        action(subject)
    except OSError as e:
        subject.path.error = f"{type(e).__name__}: {e}"


def measure(subjects: list[Subject], reps: int, src: np.ndarray, tmp: np.ndarray) -> None:
    for subject in subjects:
        attempt(subject, lambda s: check_round_trip(s, src, tmp))
    for _ in range(reps):
        for subject in subjects:
            attempt(subject, lambda s: s.path.passes.append(timed_pass(s.bracket, src, tmp)))


def measure_device(dev: Device, size: int, reps: int, src: np.ndarray, tmp: np.ndarray) -> list[Path]:
    """Every path, interleaved.

    The mappings go when this returns, before the daemon is asked to stop: it would otherwise
    wait for the files they hold until it is killed.
    """
    reference = Path(REFERENCE)
    subjects = [Subject(reference, plain(np.zeros(size, dtype=np.uint8)))]
    paths = [reference]
    with ExitStack() as stack:
        for path, factory in bo_paths():
            paths.append(path)
            if (subject := open_subject(path, factory, dev, size, stack)) is not None:
                subjects.append(subject)
        measure(subjects, reps, src, tmp)
    return paths


def measure_all(size: int, reps: int) -> list[Path] | str:
    src = np.random.default_rng(SEED).integers(0, 256, size, dtype=np.uint8)
    tmp = np.zeros(size, dtype=np.uint8)
    try:
        with MountedEmudev(devices=1) as mount, Device(mount.node(0)) as dev:
            return measure_device(dev, size, reps, src, tmp)
    except DaemonStartError as e:
        return f"emudev did not start: {e}"


# report

def gbps(ns: float, size: int) -> float:
    return 2 * size / ns


def data_state(path: Path) -> str:
    if path.mismatches:
        return "WRONG"
    return "ok" if path.checked else "not checked"


def rows(paths: list[Path], size: int) -> list[tuple[str, float | None, str]]:
    """(label, median GB/s or None, data state); a path with a copies label gives a second row."""
    result = []
    for path in paths:
        total = gbps(statistics.median(p.total_ns for p in path.passes), size) if path.passes else None
        result.append((path.label, total, data_state(path)))
        if path.copies_label is not None:
            copies = gbps(statistics.median(p.copy_ns for p in path.passes), size) if path.passes else None
            result.append((path.copies_label, copies, ""))
    return result


def table(paths: list[Path], size: int, reps: int) -> list[str]:
    memcpy = rows(paths, size)[0][1]
    lines = [f"CPU write-then-read of a {size >> 20} MiB buffer, median of {reps} passes "
             f"(GB/s = 2 {TIMES} size / time)",
             f"{'':{LABEL_WIDTH}}{'GB/s':>8}{TIMES + ' memcpy':>10}  data"]
    for label, value, data in rows(paths, size):
        ratio = f"{value / memcpy:10.3f}" if value is not None and memcpy else f"{'n/a':>10}"
        speed = f"{value:8.2f}" if value is not None else f"{'n/a':>8}"
        lines.append(f"{label:{LABEL_WIDTH}}{speed}{ratio}  {data}".rstrip())
    return lines + [f"  {path.label}: {path.error}" for path in paths if path.error is not None]


def failures(paths: list[Path]) -> list[str]:
    return [f"!! DATA WRONG, {path.label}: {problem}" for path in paths for problem in path.mismatches]


def verdict(paths: list[Path], size: int) -> str:
    values = {label: value for label, value, _ in rows(paths, size)}
    memcpy, default = values[REFERENCE], values[DEFAULT]
    if memcpy is None or default is None:
        return "target default path ≥ 50% of memcpy: not measured"
    ratio = default / memcpy
    return (f"target default path (PREP/FINI included) ≥ {TARGET:.0%} of memcpy: {ratio:.0%}, "
            f"{'met' if ratio >= TARGET else 'NOT met'}")


def run(quick: bool) -> int:
    """Print the table and the target line.

    Unlike a missed target, data that did not round-trip fails the run: it is a broken mapping,
    not a slow one, and a number measured through it means nothing.
    """
    size, reps = (QUICK_SIZE, QUICK_REPS) if quick else (SIZE, REPS)
    paths = measure_all(size, reps)
    if isinstance(paths, str):
        print(paths)
        return 1
    problems = failures(paths)
    print("\n".join([*table(paths, size, reps), *problems, "", verdict(paths, size)]))
    return 1 if problems else 0
