"""Model compiler and runtime: ONNX networks on the emudev NPU, through libaccel and the uapi only.

    from userspace.compiler import compile
    model = compile("net.onnx", device, dtype="fp32")          # or dtype="int8", calibration=[...]
    outputs = model.run({"input": x})                           # ONNX layouts in and out
    model.timings, model.stats, model.summary()
    model.close()

Pipeline: import (shape inference, constant folding, BN folding, Dropout removal, bias and
activation fusion) -> int8 domains and calibration -> lowering to kernels over strided
views (NHWC activations, OHWI weights) -> memory planning (arena by liveness, weights BO)
-> scheduling (per-engine semaphores) -> upload, then run() as often as needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from emudev.uapi import defs
from userspace.compiler import frontend
from userspace.compiler.calibrate import Sample, calibrate
from userspace.compiler.errors import CompileError, JobError, UnsupportedOperator
from userspace.compiler.lower import Lowering, int8_nodes, quant_groups
from userspace.compiler.plan import plan_memory
from userspace.compiler.quant import shared_params
from userspace.compiler.runtime import CompiledModel, Port, Timings
from userspace.libaccel import Device, isa_compatible, version_text

__all__ = ["CompileError", "CompiledModel", "JobError", "Timings", "UnsupportedOperator", "compile"]

_INT8_FUSABLE = {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Sum"}
JOB_FRACTION = 0.1  # of the device's job timeout, by estimate, per job: a 10x margin for loaded machines


def compile(model: frontend.ModelLike, device: Device, dtype: str = "fp32",
            calibration: Iterable[Sample] | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
            profile: bool = False) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto) for `device` and upload it.

    dtype "fp32" runs in float32; "int8" quantises post-training from `calibration` (samples as
    accepted by run()). Symbolic input dims are bound from `input_shapes`, else to 1. `profile`
    puts a TIMESTAMP before and after every packet (see CompiledModel.profile()). Raises CompileError for what
    the device cannot run (naming the node) and OSError (ENOMEM, ...) for what the device refuses.
    """
    if dtype not in ("fp32", "int8"):
        raise CompileError(f"dtype must be 'fp32' or 'int8', not {dtype!r}")
    isa = device.get_param(defs.DRM_EMUDEV_PARAM_ISA_VERSION)
    if not isa_compatible(isa):
        raise CompileError(f"the device runs ISA {version_text(isa)}; the compiler's streams need ISA "
                           f"{version_text(defs.DRM_EMUDEV_ISA_VERSION)}")
    started = time.perf_counter()
    graph = frontend.import_model(model, input_shapes)
    int8: set[str] = set()
    qparams = {}
    if dtype == "fp32":
        frontend.fuse_activations(graph, frontend.ACTIVATIONS, frontend.FUSABLE_PRODUCERS)
    else:
        frontend.fuse_activations(graph, {"Relu", "Clip"}, _INT8_FUSABLE)
        if calibration is None:
            raise CompileError("dtype='int8' needs calibration data (calibration=[sample, ...])")
        int8 = int8_nodes(graph)
        wanted = set(graph.inputs) | {o for node in graph.nodes for o in node.outputs if o}
        ranges = calibrate(frontend.load_model(model), graph.inputs, calibration, wanted)
        missing = sorted(wanted - set(ranges))
        if missing:
            raise CompileError(f"calibration did not measure {missing[:5]}")
        qparams = shared_params(ranges, quant_groups(graph, int8))
    job_seconds = device.get_param(defs.DRM_EMUDEV_PARAM_JOB_TIMEOUT_MS) / 1000 * JOB_FRACTION
    lowering = Lowering(graph, int8, qparams, max_kernel_seconds=job_seconds)
    lowering.run()
    for index, kernel in enumerate(lowering.kernels):
        kernel.index = index
    plan = plan_memory(lowering.kernels, lowering.storages, profile)
    inputs = [Port(name, graph.shapes[name], lowering.views[name],
                   qparams[name] if lowering.is_int8(name) else None) for name in graph.inputs]
    outputs = []
    for onnx_name, value in graph.outputs:
        if graph.is_const(value):
            const = np.asarray(graph.consts[value])
            outputs.append(Port(onnx_name, tuple(const.shape), None, const=const))
        else:
            outputs.append(Port(onnx_name, graph.shapes[value], lowering.views[value],
                                qparams[value] if lowering.is_int8(value) else None))
    elapsed = time.perf_counter() - started
    compiled = CompiledModel(device, lowering.kernels, plan, inputs, outputs, dtype, elapsed, job_seconds, profile,
                             graph.ignored_inputs)
    compiled.qparams = dict(qparams)
    return compiled
