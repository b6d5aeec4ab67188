"""The compiler's graph: ONNX nodes after import, with every shape static and every constant folded.

It stays close to ONNX (op types, attribute names, value names) so that errors and
calibration can speak of the user's model; what changes is only what import proved:
shapes are concrete, constants are numpy arrays, inference-only ops are gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Act:
    """An activation fused into the node that produces its input (device act field)."""

    op: str  # ONNX op type: Relu, Clip, LeakyRelu, Sigmoid, Tanh
    alpha: float = 0.0
    clip_min: float = 0.0
    clip_max: float = 0.0
    source: str = ""  # name of the fused ONNX node, for messages


@dataclass(eq=False)
class Node:
    op: str
    name: str
    index: int
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    act: Act | None = None

    @property
    def label(self) -> str:
        """How errors name the node: its ONNX name and its index in the model's node list."""
        return f"'{self.name}' (#{self.index})"

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[str]  # activation inputs, in ONNX order
    outputs: list[tuple[str, str]]  # (ONNX output name, value that holds it)
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    consts: dict[str, np.ndarray]
    opset: int
    ignored_inputs: list[str] = field(default_factory=list)  # model inputs nothing reads

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def output_values(self) -> set[str]:
        return {value for _, value in self.outputs}

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def rename_uses(self, old: str, new: str) -> None:
        """Every consumer (and graph output) of `old` reads `new` instead."""
        for node in self.nodes:
            node.inputs = [new if n == old else n for n in node.inputs]
        self.outputs = [(onnx_name, new if value == old else value) for onnx_name, value in self.outputs]
