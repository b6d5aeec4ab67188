"""ONNX networks with random weights: workloads for benchmarks and tests.

They are generated, or taken from the model-zoo topologies the onnx package ships as
test data, rather than downloaded, so that a fresh machine needs no network and every
run measures exactly the same graph (weights come from a seeded generator).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

OPSET = 13


class _Builder:
    """Nodes and initializers accumulated in order, with unique names."""

    def __init__(self, seed: int) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind.lower()}{self.count}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs: object) -> str:
        name = self.name(op)
        self.nodes.append(self.helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> str:
        weight = self.rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2.0 / (cin * kernel * kernel))
        name = self.name("w")
        inputs = [x, self.const(f"{name}.weight", weight)]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.rng.standard_normal(cout) * 0.05))
        pad = kernel // 2
        return self.node("Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad, pad, pad, pad])

    def batchnorm(self, x: str, channels: int) -> str:
        """Inference BatchNormalization with plausible statistics: the compiler folds it into the Conv."""
        name = self.name("bn")
        return self.node("BatchNormalization", [
            x,
            self.const(f"{name}.scale", 1 + 0.1 * self.rng.standard_normal(channels)),
            self.const(f"{name}.bias", 0.1 * self.rng.standard_normal(channels)),
            self.const(f"{name}.mean", 0.1 * self.rng.standard_normal(channels)),
            self.const(f"{name}.var", 1 + 0.1 * self.rng.random(channels)),
        ], epsilon=1e-5)

    def gemm(self, x: str, fan_in: int, fan_out: int, gain: float = 2.0) -> str:
        name = self.name("fc")
        weight = self.rng.standard_normal((fan_out, fan_in)) * np.sqrt(gain / fan_in)
        return self.node("Gemm", [x, self.const(f"{name}.weight", weight),
                                  self.const(f"{name}.bias", self.rng.standard_normal(fan_out) * 0.05)], transB=1)

    def model(self, graph_name: str, input_name: str, input_shape: Sequence[int | str],
              output_shape: Sequence[int | str], doc: str) -> onnx.ModelProto:
        """The checked model; the last node's output becomes the graph output "output"."""
        import onnx
        from onnx import TensorProto

        helper = self.helper
        self.nodes[-1].output[0] = "output"
        graph = helper.make_graph(self.nodes, graph_name,
                                  [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output_shape))],
                                  initializer=self.initializers, doc_string=doc)
        model = helper.make_model(graph, producer_name="emudev userspace.demo.models",
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def mlp(batch: int = 1, features: int = 256, hidden: Sequence[int] = (512, 256), classes: int = 10,
        seed: int = 1) -> onnx.ModelProto:
    """Gemm → Relu layers then Gemm → Softmax: the matrix-multiply path of the device alone."""
    b = _Builder(seed)
    x, width = "input", features
    for size in hidden:
        x = b.node("Relu", [b.gemm(x, width, size)])
        width = size
    b.node("Softmax", [b.gemm(x, width, classes, gain=1.0)], axis=1)
    return b.model("mlp", "input", [batch, features], [batch, classes],
                   f"MLP {features}-{'-'.join(map(str, hidden))}-{classes}, random weights")


def resnet(batch: int = 1, size: int = 64, widths: Sequence[int] = (16, 32, 64), classes: int = 10,
           seed: int = 2) -> onnx.ModelProto:
    """A small ResNet: stem, then per width a stride-2 transition (but the first) and a basic residual block.

    Basic block: Conv3x3 → BN → Relu → Conv3x3 → BN → Add(identity) → Relu, as in ResNet-18;
    GlobalAveragePool → Flatten → Gemm → Softmax at the end.
    """
    b = _Builder(seed)
    x = b.node("Relu", [b.batchnorm(b.conv("input", 3, widths[0], bias=False), widths[0])])
    channels = widths[0]
    for index, width in enumerate(widths):
        if index:
            x = b.node("Relu", [b.batchnorm(b.conv(x, channels, width, stride=2, bias=False), width)])
            channels = width
        y = b.node("Relu", [b.batchnorm(b.conv(x, channels, channels, bias=False), channels)])
        y = b.batchnorm(b.conv(y, channels, channels, bias=False), channels)
        x = b.node("Relu", [b.node("Add", [y, x])])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    b.node("Softmax", [b.gemm(x, channels, classes, gain=1.0)], axis=1)
    return b.model("resnet", "input", [batch, 3, size, size], [batch, classes],
                   f"ResNet-ish CNN on {size}x{size} RGB, widths {list(widths)}, random weights")


def tiny(batch: int = 2, seed: int = 3) -> onnx.ModelProto:
    """Conv → Relu → GlobalAveragePool → Flatten → Gemm → Softmax on 1x3x8x8: a model that compiles in a blink."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv("input", 3, 4)])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    b.node("Softmax", [b.gemm(x, 4, 5, gain=1.0)], axis=1)
    return b.model("tiny", "input", [batch, 3, 8, 8], [batch, 5], "tiny CNN for tests, random weights")


def model_zoo_path(name: str) -> str | None:
    """The onnx package's 'light' copy of a model-zoo network ("squeezenet", "resnet50", ...), if shipped."""
    import onnx

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    return path if os.path.exists(path) else None


def model_zoo(name: str, seed: int = 0) -> onnx.ModelProto:
    """A model-zoo network with real weights' statistics: the light copy's constant-filled weights are
    replaced by random ones (He-scaled, so activations neither vanish nor explode) and its final
    Softmax is dropped, so that every layer's arithmetic shows in the logits. FileNotFoundError if
    the onnx package ships no such network."""
    import onnx
    from onnx import numpy_helper

    path = model_zoo_path(name)
    if path is None:
        raise FileNotFoundError(f"the onnx package ships no light_{name}.onnx")
    model = onnx.load(path)
    rng = np.random.default_rng(seed)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept, weights, shape_inputs = [], [], set()
    for n in model.graph.node:
        if n.op_type != "ConstantOfShape":
            kept.append(n)
            continue
        shape_inputs.add(n.input[0])
        shape, name = tuple(int(d) for d in init[n.input[0]]), n.output[0]
        weights.append(numpy_helper.from_array(_zoo_weight(rng, name, shape), name))
    if kept[-1].op_type == "Softmax":
        logits = onnx.ValueInfoProto()
        logits.CopyFrom(model.graph.output[0])  # Softmax keeps the shape: the logits have the output's type
        logits.name = kept.pop().input[0]
        del model.graph.output[:]
        model.graph.output.append(logits)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    others = [t for t in model.graph.initializer if t.name not in shape_inputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*others, *weights])
    # Weights are constants, not inputs a caller may override (which is what an initializer listed
    # among the inputs means from IR 4 on: onnxruntime would then neither fold nor prepack it).
    constants = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in shape_inputs and i.name not in constants]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)  # IR 4 lets initializers stand outside the graph inputs
    onnx.checker.check_model(model)
    return model


def _zoo_weight(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Batch-norm variances and scales near 1, filters He-scaled, biases small."""
    if "_riv_" in name or "var" in name:
        value = rng.uniform(0.5, 1.5, shape)
    elif "_s_" in name or "scale" in name:
        value = rng.uniform(0.8, 1.2, shape)
    elif len(shape) > 1:
        value = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
    else:
        value = rng.standard_normal(shape) * 0.05
    return value.astype(np.float32)


def model_input(model: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    """Name and static shape of the model's one data input (graph inputs that are not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    data = next(i for i in model.graph.input if i.name not in initializers)
    return data.name, tuple(d.dim_value for d in data.type.tensor_type.shape.dim)
