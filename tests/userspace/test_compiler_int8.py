"""int8 lowering op by op: each result, dequantised, against onnxruntime's float result, within a few
quantisation steps (calibrated on the very inputs, so ranges are exact). The step is the coarser of
the output's and the op input's: ops that keep their input's quantisation (pooling, max/min, as in
TFLite) cannot be finer than it."""

from __future__ import annotations

import numpy as np
import pytest
from compiler_helpers import make_model, node, rand, reference

from userspace.compiler import compile

C = 4


def _conv_in(nodes: list, inits: dict) -> str:
    """A conv first, so that the op under test reads an int8 NHWC activation as in a real network."""
    nodes.append(node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]))
    inits["w0"] = rand(C, 3, 3, 3, scale=0.3)
    return "a"


CASES = {
    "conv_relu": lambda a: ([node("Conv", [a, "w", "b"], ["c"], strides=[2, 2]), node("Relu", ["c"], ["y"])],
                            {"w": rand(6, C, 3, 3, scale=0.3), "b": rand(6, scale=0.2)}),
    "depthwise_clip": lambda a: ([node("Conv", [a, "w"], ["c"], group=C, pads=[1, 1, 1, 1]),
                                  node("Clip", ["c", "lo", "hi"], ["y"])],
                                 {"w": rand(C, 1, 3, 3, scale=0.3), "lo": np.array(-0.5, np.float32),
                                  "hi": np.array(1.0, np.float32)}),
    "add_channel_vector": lambda a: ([node("Add", [a, "v"], ["y"])], {"v": rand(C, 1, 1)}),
    "sub_activation": lambda a: ([node("Relu", [a], ["r"]), node("Sub", [a, "r"], ["y"])], {}),
    "mul_scalar": lambda a: ([node("Mul", [a, "k"], ["y"])], {"k": np.array(-1.7, np.float32)}),
    "mul_activation": lambda a: ([node("Mul", [a, a], ["y"])], {}),
    "max_min": lambda a: ([node("Max", [a, "k"], ["m"]), node("Min", ["m", "k2"], ["y"])],
                          {"k": np.array(-0.2, np.float32), "k2": np.array(0.8, np.float32)}),
    "relu_standalone": lambda a: ([node("Relu", [a], ["r"]), node("Add", ["r", a], ["y"])], {}),
    "maxpool_avgpool": lambda a: ([node("MaxPool", [a], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2])], {}),
    "avgpool_count_pad": lambda a: ([node("AveragePool", [a], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                          count_include_pad=1)], {}),
    "global_avg_flatten_gemm": lambda a: ([node("GlobalAveragePool", [a], ["g"]), node("Flatten", ["g"], ["f"]),
                                           node("Gemm", ["f", "w", "b"], ["y"], transB=1)],
                                          {"w": rand(5, C, scale=0.5), "b": rand(5, scale=0.1)}),
    "concat_transpose": lambda a: ([node("Relu", [a], ["r"]), node("Concat", ["r", a], ["c"], axis=1),
                                    node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])], {}),
    "matmul_activations": lambda a: ([node("Reshape", [a, "s"], ["m"]), node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
                                      node("MatMul", ["m", "t"], ["y"])], {"s": np.array([1, C, -1], np.int64)}),
    "softmax_fallback": lambda a: ([node("Softmax", [a], ["y"], axis=1)], {}),
    "sigmoid_fallback_then_conv": lambda a: ([node("Sigmoid", [a], ["s"]), node("Conv", ["s", "w"], ["y"])],
                                             {"w": rand(2, C, 1, 1)}),
}


@pytest.mark.parametrize("case", CASES)
def test_int8_op(device, case):
    nodes, inits = [], {}
    a = _conv_in(nodes, inits)
    more, more_inits = CASES[case](a)
    nodes += more
    inits.update(more_inits)
    model = make_model(nodes, {"x": (2, 3, 7, 7)}, ["y"], inits)
    samples = [rand(2, 3, 7, 7) for _ in range(3)]
    with compile(model, device, dtype="int8", calibration=[{"x": s} for s in samples]) as compiled:
        out = compiled.outputs[0].qparams
        assert out is not None or case.endswith("fallback"), "expected an int8 output"
        input_step = _scale_of(compiled, "a")
        for x in samples[:2]:
            got = compiled.run({"x": x})[0]
            expected = reference(model, {"x": x})[0]
            step = max(out.scale if out else float(np.ptp(expected)) / 255, input_step)
            # a handful of steps: input, weight and output roundings compound through two layers
            assert np.abs(got - expected).max() <= 4 * step, (np.abs(got - expected).max(), step)
            assert np.abs(got - expected).mean() <= 1.0 * step, (np.abs(got - expected).mean(), step)


def _scale_of(compiled, value: str) -> float:
    """The quantisation scale the device used for an intermediate value (0 when it was fused away)."""
    params = compiled.qparams.get(value)
    return params.scale if params else 0.0
