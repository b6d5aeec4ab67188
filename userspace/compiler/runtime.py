"""The compiled model on a device: its BOs, its command streams, and run().

Everything is set up once: weights go into a device-read-only BO, activations into one
arena BO, the command streams into one command BO, and a context is created. A run writes
the inputs (converted to the device layout, quantised for int8) and zeroes the engine
semaphores, resubmits the same streams, and reads the outputs back into ONNX layouts, each
CPU access bracketed by DMA_BUF_IOCTL_SYNC START/END on a dma-buf of the arena. START waits
for the jobs through the arena's implicit fences, then every job's status is checked (a
fault names the ONNX node whose packet faulted) before the CPU reads anything.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emudev.uapi import defs
from userspace.compiler.errors import JobError, out_of_memory
from userspace.compiler.kernels import ENGINE_NAMES, Addresses, Kernel
from userspace.compiler.layout import View
from userspace.compiler.plan import PROFILE_STAMP_BYTES, SEMAPHORE_BYTES, MemoryPlan
from userspace.compiler.quant import QParams
from userspace.compiler.schedule import ScheduleStats, Stream, schedule
from userspace.libaccel import DEVICE_READ_ONLY, MAPPABLE, READ, WRITE, Bo, Context, Device, DmaBuf, Job, Syncobj

Inputs = Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray


@dataclass
class Port:
    """A model input or output as the user sees it (ONNX name, shape) and where it lives on the device."""

    name: str
    shape: tuple[int, ...]
    view: View | None  # None for an output that folded to a constant
    qparams: QParams | None = None  # set when the device holds it as int8
    const: np.ndarray | None = None


RUN_PHASES = ("write_inputs", "device", "read_outputs")  # the Timings fields a run splits into, in order


@dataclass
class Timings:
    """Seconds spent per phase; the run fields describe the last run()."""

    compile: float = 0.0
    upload: float = 0.0
    run: float = 0.0
    write_inputs: float = 0.0
    device: float = 0.0  # wall time from the first SUBMIT to the last job's completion
    device_busy: float = 0.0  # sum over jobs of start -> end as JOB_STATUS reports it
    read_outputs: float = 0.0
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"}


class CompiledModel:
    """A model compiled for one device; run() it as often as needed, close() to release the device memory."""

    def __init__(self, device: Device, kernels: list[Kernel], plan: MemoryPlan, inputs: list[Port],
                 outputs: list[Port], dtype: str, compile_seconds: float, job_seconds: float,
                 profile: bool = False, ignored_inputs: Sequence[str] = ()) -> None:
        self.device = device
        self.kernels = kernels
        self.plan = plan
        self.inputs = inputs
        self.outputs = outputs
        self.dtype = dtype
        self.job_seconds = job_seconds  # estimated work per job: where the streams are cut
        self.ignored_inputs = set(ignored_inputs)  # model inputs no node reads: accepted and ignored
        self.qparams: dict[str, QParams] = {}  # int8: (scale, zero point) of every value, by ONNX name
        self.timings = Timings(compile=compile_seconds)
        self.profile_enabled = profile
        self.stats: dict[str, int] = {}
        self._bos: list[Bo] = []
        self._context: Context | None = None
        self._streams: list[Stream] = []
        self._stream_offsets: list[int] = []
        self._last_profile: list[dict[str, Any]] = []
        self._inflight: PendingRun | None = None
        self._banned = False  # the context was banned (a job timed out): the next run gets a new one
        self._ready_at = 0.0
        self._arena_memory: np.ndarray | None = None
        self._arena_dmabuf: DmaBuf | None = None
        try:
            self._upload()
        except BaseException:
            self.close()
            raise

    # -- setup ------------------------------------------------------------------------------

    def _create_bo(self, what: str, size: int, flags: int) -> Bo:
        try:
            bo = self.device.create_bo(size, flags)
        except OSError as e:
            if e.errno == errno.ENOMEM:
                memory = self.device.get_param(defs.DRM_EMUDEV_PARAM_MEMORY_SIZE)
                raise out_of_memory(what, size, memory, e) from e
            raise
        self._bos.append(bo)
        return bo

    def _upload(self) -> None:
        started = time.perf_counter()
        plan = self.plan
        self.weights = self._create_bo("weights BO", plan.const_size, MAPPABLE | DEVICE_READ_ONLY)
        self.arena = self._create_bo("activation arena BO", plan.arena_size, MAPPABLE)
        # CPU access to the arena through a dma-buf bracketed by DMA_BUF_IOCTL_SYNC: coherent whether the
        # daemon passes the mapping through to device memory (root) or serves it from the page cache
        self._arena_dmabuf = self.arena.export()
        self._arena_memory = self._arena_dmabuf.map()
        _upload_bytes(self.weights, plan.const_blob)
        addresses = Addresses({"arena": self.arena.device_va, "const": self.weights.device_va})
        max_cmd = self.device.get_param(defs.DRM_EMUDEV_PARAM_MAX_CMD_SIZE)
        timestamps = self.arena.device_va + plan.timestamp_offset if self.profile_enabled else 0
        self._streams, stats = schedule(self.kernels, addresses, self.arena.device_va + plan.semaphore_offset,
                                        max_cmd, timestamps, self.job_seconds)
        blob = bytearray()
        for stream in self._streams:
            self._stream_offsets.append(len(blob))
            blob.extend(stream.data)
            blob.extend(bytes(-len(blob) % defs.DRM_EMUDEV_PKT_ALIGN))
        if blob:
            self.cmd = self._create_bo("command buffer BO", len(blob), MAPPABLE)
            _upload_bytes(self.cmd, bytes(blob))
        self._context = self.device.create_context()
        self.stats = _stats(self.kernels, plan, stats, len(blob))
        self.timings.upload = time.perf_counter() - started

    # -- running ----------------------------------------------------------------------------

    def run(self, inputs: Inputs, wait: Sequence[tuple[Syncobj, int]] = ()) -> list[np.ndarray]:
        """Run the model: inputs by name (dict), in order (list) or a single array; outputs in ONNX order."""
        return self.start(inputs, wait).result()

    __call__ = run

    def start(self, inputs: Inputs, wait: Sequence[tuple[Syncobj, int]] = ()) -> PendingRun:
        """Write the inputs and submit the jobs without waiting; `wait` holds syncobj points (of this
        device file) the first job waits for, e.g. a producer's. Finish with .result()."""
        if self._context is None:
            raise ValueError("the model is closed")
        if self._inflight is not None:
            raise RuntimeError("a run of this model is still in flight: call result() on it first")
        if self._banned:  # as a robust GL context after a reset: report once, then carry on with a new one
            self._context.close()
            self._context = self.device.create_context()
            self._banned = False
        t = self.timings
        started = time.perf_counter()
        arrays = self._inputs(inputs)
        with self._bracket(write=True, outstanding=None) as memory:
            memory[self.plan.semaphore_offset: self.plan.semaphore_offset + SEMAPHORE_BYTES] = 0
            for port, array in zip(self.inputs, arrays, strict=True):
                assert port.view is not None
                target = _array(memory, port.view)
                target[...] = port.qparams.quantize(array) if port.qparams else array
        t.write_inputs = time.perf_counter() - started
        t.device = t.device_busy = 0.0
        self._inflight = PendingRun(self, started, self._submit(wait))
        return self._inflight

    def _finish(self, pending: PendingRun, outstanding: Outstanding) -> list[np.ndarray]:
        t = self.timings
        results = []
        with self._bracket(write=False, outstanding=outstanding) as memory:
            for port in self.outputs:
                if port.view is None:
                    assert port.const is not None
                    results.append(np.array(port.const))
                    continue
                # One copy out of the arena, converting as it goes: every fresh page costs a fault, about
                # 1.5 ms per 3 MB output on a VM, so a second copy would double the read-out.
                data = _array(memory, port.view)
                results.append(port.qparams.dequantize(data) if port.qparams else np.array(data, np.float32))
            if self.profile_enabled:
                self._last_profile = self._read_profile(memory)
        t.read_outputs = time.perf_counter() - self._ready_at
        t.run = time.perf_counter() - pending.started
        t.runs += 1
        return results

    def _inputs(self, inputs: Inputs) -> list[np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {p.name for p in self.inputs} - self.ignored_inputs
            if unknown:
                raise ValueError(f"unknown model input(s) {sorted(unknown)}; the model takes "
                                 f"{[p.name for p in self.inputs]}")
            missing = [p.name for p in self.inputs if p.name not in inputs]
            if missing:
                raise ValueError(f"missing model input(s) {missing}")
            ordered = [inputs[p.name] for p in self.inputs]
        else:
            ordered = list(inputs)
            if len(ordered) != len(self.inputs):
                raise ValueError(f"the model takes {len(self.inputs)} input(s), got {len(ordered)}")
        arrays = []
        for port, value in zip(self.inputs, ordered, strict=True):
            array = np.asarray(value, dtype=np.float32)
            if array.shape != port.shape:
                raise ValueError(f"input '{port.name}' must have shape {port.shape} (compiled for it), "
                                 f"got {array.shape}")
            arrays.append(array)
        return arrays

    def _submit(self, wait: Sequence[tuple[Syncobj, int]]) -> Outstanding:
        """Queue the jobs (in order on the model's context); the first one waits for `wait`."""
        assert self._context is not None
        submitted = time.perf_counter()
        if not self._streams:
            return Outstanding([], submitted)
        bos = [(self.cmd, READ), (self.weights, READ), (self.arena, READ | WRITE)]
        jobs: list[tuple[Job, int]] = []
        for number, (stream, offset) in enumerate(zip(self._streams, self._stream_offsets, strict=True)):
            try:
                job = self._context.submit(self.cmd, stream.size, bos=bos, wait=wait if number == 0 else (),
                                           offset=offset)
            except OSError as e:
                raise OSError(e.errno, f"SUBMIT of job {number + 1}/{len(self._streams)} rejected: {e.strerror} "
                                       "(the daemon log says why)") from e
            jobs.append((job, number))
        return Outstanding(jobs, submitted)

    @contextmanager
    def _bracket(self, write: bool, outstanding: Outstanding | None) -> Iterator[np.ndarray]:
        """CPU access to the arena between DMA_BUF_IOCTL_SYNC START and END. START waits for the jobs'
        implicit fences on the arena, so it is also how a run waits for its jobs (no syncobj round trip;
        the device signals every fence by its job timeout); their statuses are checked before the CPU
        touches anything."""
        assert self._arena_dmabuf is not None and self._arena_memory is not None
        direction = defs.DMA_BUF_SYNC_RW if write else defs.DMA_BUF_SYNC_READ
        self._arena_dmabuf.sync(defs.DMA_BUF_SYNC_START | direction)
        try:
            if outstanding is not None:
                self.timings.device += time.perf_counter() - outstanding.submitted
                self._check(outstanding)
            self._ready_at = time.perf_counter()  # CPU phases are timed from here: the wait is the device's
            yield self._arena_memory
        finally:
            self._arena_dmabuf.sync(defs.DMA_BUF_SYNC_END | direction)

    def _check(self, outstanding: Outstanding) -> None:
        """Every job's JOB_STATUS: the first failed one is raised, naming the packet's ONNX node."""
        for job, number in outstanding.jobs:
            status = job.status()
            if status.error:
                self._banned = self._banned or status.banned
                raise self._job_error(status, number)
            self.timings.device_busy += max(status.end_ns - status.start_ns, 0) / 1e9

    def _job_error(self, status: Any, number: int) -> JobError:
        error = -status.error
        if status.faulted:
            stream = self._streams[number]
            kernel_index = stream.packet_kernels[status.fault_packet] \
                if 0 <= status.fault_packet < len(stream.packet_kernels) else -1
            kernel = self.kernels[kernel_index] if kernel_index >= 0 else None
            node = kernel.node if kernel else None
            engine = ENGINE_NAMES.get(status.fault_engine, str(status.fault_engine))
            what = f"{kernel.packet} of node {node}" if kernel else "a control packet"
            return JobError(error, f"the model's job faulted on engine {engine} at device address "
                                   f"{status.fault_va:#x}, packet {status.fault_packet} ({what})",
                            faulted=True, engine=engine, packet=status.fault_packet, va=status.fault_va, node=node)
        reason = {errno.ETIME: "timed out (the device reset its engines)", errno.ECANCELED: "was cancelled",
                  errno.ESRCH: "was cancelled with its context", errno.ENODEV: "lost the device"}.get(error, "failed")
        return JobError(error, f"the model's job {reason}")

    # -- profiling ---------------------------------------------------------------------------

    def _read_profile(self, memory: np.ndarray) -> list[dict[str, Any]]:
        base = self.plan.timestamp_offset
        stamps = memory[base: base + PROFILE_STAMP_BYTES * len(self.kernels)].view(np.uint64).reshape(-1, 2)
        rows = []
        for kernel in self.kernels:
            start, end = (int(t) for t in stamps[kernel.index])
            rows.append({"node": kernel.node, "packet": kernel.packet, "engine": ENGINE_NAMES[kernel.engine],
                         "start_ns": start, "end_ns": end, "busy_ns": end - start})
        return rows

    def profile(self) -> list[dict[str, Any]]:
        """Each kernel of the last run (compile with profile=True): its ONNX node, packet and engine, and
        CLOCK_MONOTONIC right before and after its packet ran, waits on other engines excluded."""
        if not self.profile_enabled:
            raise ValueError("compile with profile=True to get per-kernel timestamps")
        return list(self._last_profile)

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy the context and syncobj and close every BO (idempotent)."""
        if self._context is not None:
            try:
                self._context.close()
            finally:
                self._context = None
        self._arena_memory = None
        if self._arena_dmabuf is not None:
            self._arena_dmabuf.close()
            self._arena_dmabuf = None
        bos, self._bos = self._bos, []
        for bo in bos:
            bo.close()

    def __enter__(self) -> CompiledModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> str:
        """A short human-readable description: kernels per packet type, memory, jobs."""
        counts: dict[str, int] = {}
        for kernel in self.kernels:
            counts[kernel.packet] = counts.get(kernel.packet, 0) + 1
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
        s = self.stats
        return (f"{self.dtype} model: {kinds}; {s.get('jobs', 0)} job(s), {s.get('packets', 0)} packets "
                f"({s.get('waits', 0)} SEM_WAIT, {s.get('signals', 0)} SEM_SIGNAL); arena {s.get('arena_bytes', 0)} "
                f"B (without reuse {s.get('arena_unshared_bytes', 0)} B), weights {s.get('weight_bytes', 0)} B")


@dataclass
class Outstanding:
    """Jobs of a run submitted and not yet checked: (job, its number among the streams)."""

    jobs: list[tuple[Job, int]]
    submitted: float


class PendingRun:
    """A run whose jobs are queued; result() waits for them and returns the outputs."""

    def __init__(self, model: CompiledModel, started: float, outstanding: Outstanding) -> None:
        self.model = model
        self.started = started
        self._outstanding = outstanding
        self._outputs: list[np.ndarray] | None = None

    def result(self) -> list[np.ndarray]:
        """The outputs, in the ONNX layouts; raises JobError if a job failed (once: the run is over)."""
        if self._outputs is not None:
            return self._outputs
        try:
            self._outputs = self.model._finish(self, self._outstanding)
            return self._outputs
        finally:
            self.model._inflight = None


def _upload_bytes(bo: Bo, data: bytes) -> None:
    """Write a BO once through a dma-buf bracketed by DMA_BUF_IOCTL_SYNC START/END: the pairing that is
    coherent with and without FUSE passthrough (BO_PREP/BO_FINI only cover the device-fd mapping)."""
    with bo.export() as dmabuf, dmabuf.cpu_access(write=True) as memory:
        memory[: len(data)] = np.frombuffer(data, np.uint8)


def _array(memory: np.ndarray, view: View) -> np.ndarray:
    """A numpy window on BO memory for a view (strided: this is where layouts convert on the CPU)."""
    return np.ndarray(view.shape, dtype=view.dtype, buffer=memory, offset=view.storage.offset + view.offset,
                      strides=view.strides)


def _stats(kernels: list[Kernel], plan: MemoryPlan, stats: ScheduleStats, cmd_bytes: int) -> dict[str, int]:
    arena = {id(s): s for k in kernels for s in k.storages() if s.kind == "arena"}
    return {"kernels": len(kernels), "packets": stats.packets, "waits": stats.waits, "signals": stats.signals,
            "jobs": stats.jobs, "arena_bytes": plan.arena_size, "weight_bytes": plan.const_size,
            "arena_unshared_bytes": sum(s.nbytes for s in arena.values()), "command_bytes": cmd_bytes}
