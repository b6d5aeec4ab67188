"""Small whole networks, built with onnx.helper, for the compiler tests."""

from __future__ import annotations

import numpy as np
import onnx
from compiler_helpers import make_model, node

_rng = np.random.default_rng(0)


def _seed(seed: int) -> None:
    """Each network draws its weights from its own seeded generator: the same net whatever ran before."""
    global _rng
    _rng = np.random.default_rng(seed)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (_rng.standard_normal(shape) * scale).astype(np.float32)


def he(*shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return rand(*shape, scale=float(np.sqrt(2.0 / fan_in)))


def lenet(batch: int = 1) -> onnx.ModelProto:
    """LeNet-5 shaped CNN: conv-relu-pool twice, flatten after NHWC convs, three FC layers, softmax."""
    _seed(1)
    return make_model([
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
        node("Relu", ["c1"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "w2", "b2"], ["c2"]),
        node("Relu", ["c2"], ["r2"]),
        node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["p2"], ["f"]),
        node("Gemm", ["f", "w3", "b3"], ["g3"], transB=1),
        node("Relu", ["g3"], ["r3"]),
        node("Gemm", ["r3", "w4", "b4"], ["g4"], transB=1),
        node("Relu", ["g4"], ["r4"]),
        node("Gemm", ["r4", "w5", "b5"], ["logits"], transB=1),
        node("Softmax", ["logits"], ["probs"], axis=1),
    ], {"x": (batch, 1, 28, 28)}, ["probs"], {
        "w1": he(6, 1, 5, 5), "b1": rand(6, scale=0.1), "w2": he(16, 6, 5, 5), "b2": rand(16, scale=0.1),
        "w3": he(120, 400), "b3": rand(120, scale=0.1), "w4": he(84, 120), "b4": rand(84, scale=0.1),
        "w5": he(10, 84), "b5": rand(10, scale=0.1)})


def mlp(batch: int = 8) -> onnx.ModelProto:
    """Three fully connected layers as exported by PyTorch (MatMul + Add) and by Keras (Gemm)."""
    _seed(2)
    return make_model([
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["r1"]),
        node("Gemm", ["r1", "w2", "b2"], ["g2"]),
        node("Clip", ["g2", "lo", "hi"], ["r2"]),
        node("Gemm", ["r2", "w3", "b3"], ["y"]),
    ], {"x": (batch, 64)}, ["y"], {
        "w1": he(128, 64).T.copy(), "b1": rand(128, scale=0.1), "w2": he(64, 128).T.copy(), "b2": rand(64, scale=0.1),
        "w3": he(10, 64).T.copy(), "b3": rand(10, scale=0.1), "lo": np.array(0.0, np.float32),
        "hi": np.array(6.0, np.float32)})


def branches(batch: int = 1) -> onnx.ModelProto:
    """An inception block with a residual connection: three branches (1x1, 3x3, pool + 1x1) concatenated
    on channels, added to a projection of the block input, then global pooling and a classifier."""
    _seed(3)
    c = 8
    return make_model([
        node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c0", "g", "beta", "mean", "var"], ["bn0"]),
        node("Relu", ["bn0"], ["h"]),
        node("Conv", ["h", "wa"], ["ba"]),
        node("Relu", ["ba"], ["ra"]),
        node("Conv", ["h", "wb", "bb"], ["bb_"], pads=[1, 1, 1, 1]),
        node("Relu", ["bb_"], ["rb"]),
        node("MaxPool", ["h"], ["pc"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        node("Conv", ["pc", "wc"], ["bc"]),
        node("Concat", ["ra", "rb", "bc"], ["cat"], axis=1),
        node("Conv", ["h", "wp"], ["proj"]),
        node("Add", ["cat", "proj"], ["res"]),
        node("Relu", ["res"], ["out"]),
        node("GlobalAveragePool", ["out"], ["gap"]),
        node("Flatten", ["gap"], ["flat"]),
        node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ], {"x": (batch, 3, 12, 12)}, ["logits"], {
        "w0": he(c, 3, 3, 3), "b0": rand(c, scale=0.1), "g": (1 + rand(c, scale=0.1)), "beta": rand(c, scale=0.1),
        "mean": rand(c, scale=0.1), "var": (1 + np.abs(rand(c, scale=0.1))),
        "wa": he(4, c, 1, 1), "wb": he(6, c, 3, 3), "bb": rand(6, scale=0.1), "wc": he(6, c, 1, 1),
        "wp": he(16, c, 1, 1), "wf": he(5, 16), "bf": rand(5, scale=0.1)})
