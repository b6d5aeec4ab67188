"""Calibration for int8: the range every intermediate tensor takes on representative inputs.

The float model runs on the CPU with onnxruntime, every node output made a graph output,
so ranges are measured on exactly the network the user gave (names of fused values are
the ONNX names of the last fused node, which is the range the device must represent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from userspace.compiler.errors import CompileError

Sample = Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray


def _feeds(sample: Sample, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(sample, np.ndarray):
        sample = [sample]
    if isinstance(sample, Mapping):
        missing = [n for n in names if n not in sample]
        if missing:
            raise CompileError(f"calibration sample lacks model input(s) {missing}")
        return {n: np.asarray(sample[n], np.float32) for n in names}
    if len(sample) != len(names):
        raise CompileError(f"calibration sample has {len(sample)} arrays for {len(names)} model inputs")
    return {n: np.asarray(a, np.float32) for n, a in zip(names, sample, strict=True)}


def calibrate(proto: onnx.ModelProto, inputs: list[str], samples: Iterable[Sample],
              wanted: set[str]) -> dict[str, tuple[float, float]]:
    """(min, max) of every name in `wanted` over the samples (model inputs included)."""
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    existing = {o.name for o in model.graph.output}
    produced = [o for node in model.graph.node for o in node.output if o]
    for name in produced:
        if name in wanted and name not in existing:
            info = typed.get(name)
            model.graph.output.append(info if info is not None else onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    ranges: dict[str, tuple[float, float]] = {}
    count = 0
    for sample in samples:
        feeds = _feeds(sample, inputs)
        results = dict(zip(names, session.run(names, feeds), strict=True))
        results.update(feeds)
        for name in wanted:
            value = results.get(name)
            if value is None or value.size == 0 or value.dtype.kind != "f":
                continue
            low, high = float(np.min(value)), float(np.max(value))
            old = ranges.get(name)
            ranges[name] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
        count += 1
    if not count:
        raise CompileError("int8 compilation needs calibration data (calibration=[sample, ...])")
    return ranges
