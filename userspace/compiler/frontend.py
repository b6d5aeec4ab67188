"""ONNX import: static shapes, constant folding and the inference-time simplifications.

The device runs only what is left after this: every shape is known at compile time
(symbolic dims are bound from `input_shapes` or 1), every subgraph whose inputs are
constant is evaluated here with numpy (onnx.reference), Dropout and Identity disappear,
BatchNormalization folds into the convolution before it, constant biases fold into
the Conv/Gemm/MatMul they follow, and activations fuse into their producer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from userspace.compiler.errors import CompileError, UnsupportedOperator
from userspace.compiler.graph import Act, Graph, Node

ModelLike = str | os.PathLike | bytes | onnx.ModelProto

_MAX_FOLD_ROUNDS = 16
# Ops that are evaluated on the CPU at compile time when all their inputs are constant, and
# never reach the device otherwise (shape arithmetic).
_SHAPE_OPS = {"Shape", "Size"}
FUSABLE_PRODUCERS = {"Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"}
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh"}


def load_model(model: ModelLike) -> onnx.ModelProto:
    """A ModelProto from a path, serialized bytes or a proto (copied: the caller's stays untouched)."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model))


def import_model(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """The model as a Graph: static shapes, folded constants, no inference-only nodes."""
    proto = load_model(model)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise CompileError("the model imports no default-domain (ai.onnx) opset")
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        node.doc_string = str(index)  # the original index survives folding rounds, for messages
    # constants live in a dict from here on: shape inference sees the large ones as typed inputs only,
    # so a model with hundreds of MB of weights is not serialised at every round
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    del proto.graph.initializer[:]
    _bind_input_shapes(proto, dict(input_shapes or {}), consts)
    imports = {o.domain or "": o.version for o in proto.opset_import}
    for _ in range(_MAX_FOLD_ROUNDS):
        shapes, dtypes = _infer(proto, consts)
        if not _fold_constants(proto, consts, shapes, imports):
            break
    graph = _to_graph(proto, opset, consts, shapes, dtypes)
    _remove_identities(graph)
    check_static(graph)
    _fold_batchnorm(graph)
    _fuse_bias(graph)
    return graph


def _bind_input_shapes(proto: onnx.ModelProto, shapes: dict[str, Sequence[int]],
                       initializers: Mapping[str, np.ndarray]) -> None:
    known = {i.name for i in proto.graph.input}
    for name in shapes:
        if name not in known:
            raise CompileError(f"input_shapes names '{name}', which is not a model input")
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        given = shapes.get(value.name)
        if given is not None:
            if len(given) != len(dims):
                raise CompileError(f"input '{value.name}' has rank {len(dims)}, input_shapes gives {list(given)}")
            for dim, size in zip(dims, given, strict=True):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise CompileError(f"input '{value.name}' has a fixed dim {dim.dim_value}, input_shapes "
                                       f"gives {size}")
                dim.dim_value = int(size)
        else:
            for dim in dims:
                if not dim.HasField("dim_value") or dim.dim_value <= 0:
                    dim.dim_value = 1  # an unbound symbolic dim (batch): compile for 1


_SMALL = 4096  # constants up to this many elements (and all integer ones) are given to shape inference


def _infer(proto: onnx.ModelProto, consts: Mapping[str, np.ndarray]) -> tuple[dict[str, tuple[int, ...]],
                                                                             dict[str, np.dtype]]:
    """Static shapes and dtypes of every value, constants included."""
    stub = onnx.ModelProto()
    stub.CopyFrom(proto)
    stub.ir_version = max(stub.ir_version, 4)  # initializers need not be listed as inputs
    declared = {i.name for i in stub.graph.input}
    used = {name for node in stub.graph.node for name in node.input}
    for name, array in consts.items():
        if name not in used:
            continue
        if array.size <= _SMALL or array.dtype.kind in "iub":
            stub.graph.initializer.append(numpy_helper.from_array(array, name))
        elif name not in declared:
            stub.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
    inferred = onnx.shape_inference.infer_shapes(stub, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    g = inferred.graph
    for value in [*g.input, *g.value_info, *g.output]:
        t = value.type.tensor_type
        if t.elem_type:
            dtypes[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[value.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for name, array in consts.items():
        shapes[name], dtypes[name] = tuple(array.shape), array.dtype
    return shapes, dtypes


def _fold_constants(proto: onnx.ModelProto, consts: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                    imports: dict[str, int]) -> bool:
    """Evaluate every node whose inputs are all constant (and Shape/Size of static shapes) into
    `consts`; True when something was folded."""
    graph = proto.graph
    kept, folded = [], False
    for node in graph.node:
        values = None
        if node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx") and node.input[0] in shapes:
            values = _shape_op(node, shapes[node.input[0]])
        elif all(not name or name in consts for name in node.input) and not _has_subgraph(node):
            values = _evaluate(node, consts, imports)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, values, strict=False):
            if name:
                consts[name] = np.asarray(value)
        folded = True
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def _shape_op(node: onnx.NodeProto, shape: tuple[int, ...]) -> list[np.ndarray]:
    if node.op_type == "Size":
        return [np.array(int(np.prod(shape)), dtype=np.int64)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return [np.array(shape[start:end], dtype=np.int64)]


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _evaluate(node: onnx.NodeProto, consts: dict[str, np.ndarray], opsets: dict[str, int]) -> list[Any] | None:
    """One node on the CPU with the ONNX reference implementation; None when it cannot be."""
    try:
        evaluator = ReferenceEvaluator(node, opsets=opsets)
        feeds = {name: consts[name] for name in node.input if name}
        return list(evaluator.run(None, feeds))
    except Exception as e:  # an op the reference lacks stays in the graph and is reported by lowering
        if node.op_type == "Constant":
            raise CompileError(f"cannot evaluate constant: {e}", _label(node), node.op_type) from e
        return None


def _label(node: onnx.NodeProto) -> str:
    return f"'{node.name}' (#{node.doc_string})"


def _to_graph(proto: onnx.ModelProto, opset: int, all_consts: dict[str, np.ndarray],
              shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype]) -> Graph:
    g = proto.graph
    used = {name for node in g.node for name in node.input} | {o.name for o in g.output}
    consts = {name: array for name, array in all_consts.items() if name in used}
    nodes = []
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperator(f"operator {node.domain}.{node.op_type} is not supported (custom domain)",
                                      _label(node), node.op_type)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(Node(node.op_type, node.name, int(node.doc_string or 0), list(node.input), list(node.output),
                          attrs))
    # inputs nothing reads (IR 3 lists initializers as inputs; folding may leave some unused) need no data
    inputs = [i.name for i in g.input if i.name not in consts and i.name in used]
    graph = Graph(nodes, inputs, [(o.name, o.name) for o in g.output], shapes, dtypes, consts, opset)
    graph.ignored_inputs = [i.name for i in g.input if i.name not in consts and i.name not in used]
    return graph


def check_static(graph: Graph) -> None:
    """Every value the device computes has a static shape (after folding, which fixes most)."""
    used = {name for node in graph.nodes for name in node.inputs} | graph.output_values()
    for node in graph.nodes:
        for name in node.outputs:
            if name and name in used and name not in graph.shapes:
                raise CompileError(f"the shape of '{name}' is not static after constant folding (data-dependent "
                                   "shapes cannot run on the device)", node.label, node.op)


def _remove_identities(graph: Graph) -> None:
    """Identity and inference-mode Dropout forward their input."""
    consumers = graph.consumers()
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout"):
            continue
        if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2] and not (
                graph.is_const(node.inputs[2]) and not bool(graph.consts[node.inputs[2]])):
            raise CompileError("Dropout in training mode is not supported", node.label, node.op)
        if len(node.outputs) > 1 and node.outputs[1] and consumers.get(node.outputs[1]):
            raise CompileError("the mask output of Dropout is used; inference has none", node.label, node.op)
        graph.nodes.remove(node)
        graph.rename_uses(node.outputs[0], node.inputs[0])


def _sole_consumer(graph: Graph, value: str) -> Node | None:
    users = graph.consumers().get(value, [])
    if len(users) != 1 or value in graph.output_values():
        return None
    return users[0]


def _fold_batchnorm(graph: Graph) -> None:
    """Conv -> BatchNormalization becomes one Conv with scaled weights and a shifted bias."""
    producers = graph.producers()
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or not all(graph.is_const(n) for n in bn.inputs[1:5]):
            continue
        conv = producers.get(bn.inputs[0])
        if conv is None or conv.op != "Conv" or _sole_consumer(graph, bn.inputs[0]) is not bn:
            continue
        if not graph.is_const(conv.inputs[1]) or (len(conv.inputs) > 2 and conv.inputs[2]
                                                  and not graph.is_const(conv.inputs[2])):
            continue
        if bn.attr("training_mode", 0) or len([o for o in bn.outputs if o]) > 1:
            continue
        gamma, beta, mean, var = (graph.consts[n].astype(np.float64) for n in bn.inputs[1:5])
        scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        weight = graph.consts[conv.inputs[1]].astype(np.float64)
        out_channels = weight.shape[0]
        bias = graph.consts[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] \
            else np.zeros(out_channels)
        w_name, b_name = f"{conv.name}::weight+bn", f"{conv.name}::bias+bn"
        graph.consts[w_name] = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        graph.consts[b_name] = ((bias - mean) * scale + beta).astype(np.float32)
        graph.shapes[w_name], graph.shapes[b_name] = graph.consts[w_name].shape, graph.consts[b_name].shape
        conv.inputs = [conv.inputs[0], w_name, b_name]
        conv.outputs = [bn.outputs[0]]
        graph.nodes.remove(bn)
        producers[bn.outputs[0]] = conv


def _fuse_bias(graph: Graph) -> None:
    """Add of a constant per-output-channel vector after Conv/Gemm/MatMul becomes their bias."""
    producers = graph.producers()
    for add in list(graph.nodes):
        if add.op != "Add" or len(add.inputs) != 2 or add.act is not None:
            continue
        const = next((n for n in add.inputs if graph.is_const(n)), None)
        other = next((n for n in add.inputs if not graph.is_const(n)), None)
        if const is None or other is None:
            continue
        node = producers.get(other)
        if node is None or node.act is not None or _sole_consumer(graph, other) is not add:
            continue
        out_shape, c = graph.shapes[add.outputs[0]], graph.consts[const]
        if out_shape != graph.shapes[other]:
            continue
        if node.op == "Conv":
            channels = out_shape[1]
            ok = c.ndim <= len(out_shape) and (c.size == 1 or (c.size == channels and c.ndim >= 3
                                                                and c.shape[-3] == channels))
            vector = np.broadcast_to(c.reshape(-1), (channels,)) if ok else None
        elif node.op in ("Gemm", "MatMul"):
            channels = out_shape[-1]
            ok = c.size in (1, channels) and (c.ndim == 0 or c.shape[-1] == c.size)
            vector = np.broadcast_to(c.reshape(-1), (channels,)) if ok else None
        else:
            continue
        if vector is None:
            continue
        existing = node.attrs.get("_bias")
        node.attrs["_bias"] = vector.astype(np.float32) + (existing if existing is not None else 0)
        node.outputs = [add.outputs[0]]
        graph.nodes.remove(add)
        producers[add.outputs[0]] = node


def activation_of(graph: Graph, node: Node) -> Act:
    """The device activation an ONNX activation node means (Clip bounds must be constant)."""
    if node.op == "Clip":
        lo, hi = node.attr("min", -np.inf), node.attr("max", np.inf)
        for position, name in ((1, "min"), (2, "max")):
            if len(node.inputs) > position and node.inputs[position]:
                if not graph.is_const(node.inputs[position]):
                    raise CompileError(f"Clip {name} must be a constant", node.label, node.op)
                value = float(graph.consts[node.inputs[position]])
                lo, hi = (value, hi) if name == "min" else (lo, value)
        return Act("Clip", clip_min=float(max(lo, -3.4e38)), clip_max=float(min(hi, 3.4e38)), source=node.name)
    if node.op == "LeakyRelu":
        return Act("LeakyRelu", alpha=float(node.attr("alpha", 0.01)), source=node.name)
    return Act(node.op, source=node.name)


def fuse_activations(graph: Graph, allowed: set[str], producers_allowed: set[str]) -> None:
    """An activation whose input has no other consumer is applied by the node producing it."""
    producers = graph.producers()
    for node in list(graph.nodes):
        if node.op not in ACTIVATIONS or node.op not in allowed:
            continue
        source = node.inputs[0]
        producer = producers.get(source)
        if producer is None or producer.op not in producers_allowed or producer.act is not None:
            continue
        if _sole_consumer(graph, source) is not node or graph.dtypes.get(source) != np.float32:
            continue
        producer.act = activation_of(graph, node)
        producer.outputs = [node.outputs[0], *producer.outputs[1:]]
        graph.nodes.remove(node)
        producers[node.outputs[0]] = producer
