"""Lowering: ONNX nodes to device kernels over strided views.

Each value gets a view; 4-D activations are stored NHWC (3-D ones N,L,C), everything else
row-major in ONNX order. Kernels ask for the axis arrangement their packet needs and the
strides do the layout work: CONV/PDP see NHWC, CDP sees the softmax axis last, GEMM sees
[B0, B1, M, K] (a transposed operand is a stride swap), SDP sees operands broadcast with 0
strides. Concat inputs are produced straight into their slice of the concat output; a
Reshape of a dense view, Slice and Split are free views; only a reshape of a non-dense view
(a Flatten after an NHWC conv, which must yield ONNX's NCHW order) costs a RUBIK copy, and
not even that when the flattened tensor only feeds constant-weight matrix products (their
weight rows are permuted to the stored order instead).

In int8 mode every node runs in the int8 domain when the ISA has an int8 form for it and
the fp32 domain otherwise; where a value crosses domains an SDP conversion (de)quantises it,
so the whole network stays on the device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from emudev.uapi import defs
from userspace.compiler import quant
from userspace.compiler.errors import CompileError, UnsupportedOperator
from userspace.compiler.frontend import activation_of
from userspace.compiler.graph import Act, Graph, Node
from userspace.compiler.kernels import Addr, Kernel, RequantSpec
from userspace.compiler.layout import NHWC, Storage, View, new_view, physical_order
from userspace.compiler.quant import QParams

F32, I8, I32 = np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.int32)

INT8_COMPUTE = {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Relu", "Clip", "Neg",
                "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
                "ReduceMax"}
MOVERS = {"Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Pad", "Identity"}
SHARED_QUANT = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Max",
                "Min"} | MOVERS
ALIASING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity", "Cast"}


def default_order(rank: int) -> tuple[int, ...]:
    if rank == 4:
        return NHWC
    if rank == 3:
        return (0, 2, 1)
    return tuple(range(rank))


def int8_nodes(graph: Graph) -> set[str]:
    """Names of the nodes that run in the int8 domain (the rest run in fp32)."""
    int8_values = set()
    chosen = set()
    consumers = graph.consumers()
    for name in graph.inputs:
        first = consumers.get(name, [None])[0]
        if first is not None and _int8_capable(graph, first, int8_values | {name}):
            int8_values.add(name)
    for node in graph.nodes:
        if _int8_capable(graph, node, int8_values):
            chosen.add(node.name)
            int8_values.update(o for o in node.outputs if o)
    return chosen


def _int8_capable(graph: Graph, node: Node, int8_values: set[str]) -> bool:
    if node.op in MOVERS:
        main = next((n for n in node.inputs if n and not graph.is_const(n)), None)
        return main is not None and main in int8_values
    if node.op not in INT8_COMPUTE:
        return False
    if node.act is not None and node.act.op not in ("Relu", "Clip"):
        return False
    if node.op == "Conv":
        return graph.is_const(node.inputs[1]) and len(graph.shapes[node.inputs[0]]) in (3, 4)
    if node.op == "BatchNormalization":
        return len(graph.shapes[node.inputs[0]]) == 4 and all(graph.is_const(n) for n in node.inputs[1:5])
    if node.op == "Div":
        return graph.is_const(node.inputs[1])
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2]:
        c = node.inputs[2]  # only a C that folds into the bias has an int8 form
        n = graph.shapes[node.outputs[0]][-1]
        return graph.is_const(c) and graph.consts[c].size in (1, n) and (
            graph.consts[c].ndim == 0 or graph.consts[c].shape[-1] == graph.consts[c].size)
    return True


def quant_groups(graph: Graph, int8: set[str]) -> list[list[str]]:
    """Values that must share quantisation parameters (data movement and max/min in int8)."""
    groups = []
    for node in graph.nodes:
        if node.name in int8 and node.op in SHARED_QUANT:
            values = [n for n in node.inputs if n and not graph.is_const(n)] + [o for o in node.outputs[:1] if o]
            if node.op in ("Pad", "Slice", "Reshape", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceMax"):
                values = [node.inputs[0], node.outputs[0]]
            elif node.op == "Split":
                values = [node.inputs[0], *(o for o in node.outputs if o)]
            groups.append(values)
    return groups


class Lowering:
    """Turns the graph into kernels and storages; `kernels` are in a valid execution order."""

    def __init__(self, graph: Graph, int8: set[str] | None = None, qparams: dict[str, QParams] | None = None,
                 max_kernel_seconds: float = 0.0) -> None:
        self.graph = graph
        self.max_kernel_seconds = max_kernel_seconds
        self.int8 = int8 or set()
        self.qp = qparams or {}
        self.kernels: list[Kernel] = []
        self.storages: list[Storage] = []
        self.views: dict[str, View] = {}
        self.converted: dict[tuple[str, bool], View] = {}
        self.preassigned: dict[str, View] = {}
        self.consts: dict[tuple[str, str], View] = {}
        self._tag = 0
        self.concat_tags: dict[str, int] = {}
        self.row_order: dict[str, np.ndarray] = {}  # flattened values stored in another order than ONNX's
        self.node: Node | None = None

    # -- entry -----------------------------------------------------------------------------

    def run(self) -> None:
        graph = self.graph
        int8_inputs = self._int8_inputs()
        for name in graph.inputs:
            if len(graph.shapes[name]) > 4 and sum(d != 1 for d in graph.shapes[name]) > 4:
                raise CompileError(f"model input '{name}' has more than four non-unit dims")
            is8 = name in int8_inputs
            view = self._alloc(name, graph.shapes[name], I8 if is8 else F32, default_order(len(graph.shapes[name])),
                               self.qp[name].zero_point if is8 else 0)
            view.storage.pinned = True
            self.views[name] = view
        self._plan_concats()
        for node in graph.nodes:
            self.node = node
            handler = getattr(self, f"_op_{node.op}", None)
            if handler is None:
                raise UnsupportedOperator(f"operator {node.op} is not supported by the emudev compiler", node.label,
                                          node.op)
            try:
                handler(node)
            except ValueError as e:  # a shape the lowering did not foresee: still the user's node to fix
                raise CompileError(f"cannot lower: {e}", node.label, node.op) from e
        self.node = None
        for _, value in graph.outputs:
            if value in self.views:
                self.views[value].storage.pinned = True

    def _int8_inputs(self) -> set[str]:
        consumers = self.graph.consumers()
        return {name for name in self.graph.inputs
                if (first := consumers.get(name, [None])[0]) is not None and first.name in self.int8}

    def is_int8(self, value: str) -> bool:
        """Whether a value lives in the int8 domain."""
        view = self.views.get(value)
        return view is not None and view.dtype == I8

    # -- storages and views -----------------------------------------------------------------

    def _alloc(self, name: str, shape: Sequence[int], dtype: np.dtype, order: Sequence[int] | None = None,
               zero_point: int = 0) -> View:
        size = max(int(np.prod(shape, dtype=np.int64)), 1) * dtype.itemsize
        storage = Storage(name, size, "arena")
        self.storages.append(storage)
        return new_view(storage, shape, dtype, order, zero_point=zero_point)

    def const(self, array: np.ndarray, dtype: np.dtype, name: str, zero_point: int = 0) -> View:
        data = np.ascontiguousarray(np.asarray(array).astype(dtype))
        key = (name, dtype.str)
        if name and key in self.consts and self.consts[key].shape == data.shape:
            return self.consts[key]
        storage = Storage(name, max(data.nbytes, dtype.itemsize), "const", data.tobytes() or bytes(dtype.itemsize))
        self.storages.append(storage)
        view = new_view(storage, data.shape, dtype, zero_point=zero_point)
        if name:
            self.consts[key] = view
        return view

    def output(self, node: Node, shape: Sequence[int] | None = None, order: Sequence[int] | None = None,
               index: int = 0, int8: bool | None = None) -> View:
        """The view a node's output is written to: a concat slice planned for it, or fresh arena."""
        name = node.outputs[index]
        shape = tuple(self.graph.shapes[name] if shape is None else shape)
        int8 = (node.name in self.int8) if int8 is None else int8
        zp = self.qp[name].zero_point if int8 else 0
        planned = self.preassigned.get(name)
        if planned is not None and planned.shape == shape and planned.dtype == (I8 if int8 else F32):
            view = planned.with_quant(zp)
        else:
            view = self._alloc(name, shape, I8 if int8 else F32, order or default_order(len(shape)), zp)
        self.views[name] = view
        return view

    def value(self, name: str, int8: bool, *, qp: QParams | None = None) -> View:
        """A value (activation or constant) in the requested domain."""
        graph = self.graph
        if graph.is_const(name):
            data = graph.consts[name]
            if data.dtype.kind not in "fiub":
                raise CompileError(f"constant '{name}' has dtype {data.dtype}", self._label())
            if not int8:
                return self.const(data, F32, name)
            params = qp or _const_qparams(data)
            return self.const(params.quantize(data), I8, f"{name}::q{params.scale:g},{params.zero_point}",
                              params.zero_point)
        if graph.dtypes.get(name, F32) != F32:
            raise CompileError(f"value '{name}' has dtype {graph.dtypes[name]}; the device computes float32 and "
                               "int8 only (integer tensors must fold to constants)", self._label())
        view = self.views[name]
        if (view.dtype == I8) == int8:
            return view
        key = (name, int8)
        if key not in self.converted:
            self.converted[key] = self._convert(name, view, int8)
        return self.converted[key]

    def _convert(self, name: str, view: View, to_int8: bool) -> View:
        """An SDP conversion of a value crossing domains: int8 -> fp32 scales by s, fp32 -> int8 by 1 / s."""
        params = self.qp.get(name)
        if params is None:
            raise CompileError(f"value '{name}' has no calibration range", self._label())
        order = physical_order(view)
        suffix = "q" if to_int8 else "dq"
        out = self._alloc(f"{name}::{suffix}", view.shape, I8 if to_int8 else F32, order,
                          params.zero_point if to_int8 else 0)
        channels = out.permute(order).as4d().shape[3]
        scale = self.const(np.full(channels, 1 / params.scale if to_int8 else params.scale, F32), F32,
                           f"{name}::{suffix}scale")
        extra: dict[str, object] = {"scale_va": Addr(scale)}
        if to_int8:
            extra["requant"] = RequantSpec()
        self._sdp(defs.DRM_EMUDEV_SDP_NONE, view, None, out, [view, scale], [out], **extra)
        return out

    def _label(self) -> str:
        return self.node.label if self.node is not None else "model inputs"

    def emit(self, packet: str, reads: Sequence[View], writes: Sequence[View], **fields: object) -> None:
        kernel = Kernel(packet, dict(fields), list(reads), list(writes), self._label())
        kernel.cost = estimate_seconds(packet, fields)
        self.kernels.append(kernel)

    def emit_banded(self, packet: str, reads: Sequence[View], writes: Sequence[View], *, src: View, dst: View,
                    kernel_h: int, stride_h: int, dilation_h: int, pad: Sequence[int], **fields: object) -> None:
        """A CONV or PDP, cut into bands of output rows when one packet would be too long for a job
        (each band reads the input rows its windows cover, with the padding that falls in it)."""
        whole = estimate_seconds(packet, {"src": src, "dst": dst, **fields})
        out_h, in_h = dst.shape[1], src.shape[1]
        bands = min(out_h, math.ceil(whole / self.max_kernel_seconds)) if self.max_kernel_seconds else 1
        cuts = [round(i * out_h / bands) for i in range(bands + 1)] if bands > 1 else []
        pieces = []
        for r0, r1 in itertools.pairwise(cuts):
            low = r0 * stride_h - pad[0]
            high = (r1 - 1) * stride_h - pad[0] + (kernel_h - 1) * dilation_h + 1
            in_lo, in_hi = max(0, low), min(in_h, high)
            if in_hi <= in_lo:
                pieces = []  # a band of padding only: keep the packet whole
                break
            pieces.append((r0, r1, in_lo, in_hi, in_lo - low, high - in_hi))
        if not pieces:
            self.emit(packet, reads, writes, src=src, dst=dst, pad=list(pad), **fields)
            return
        for r0, r1, in_lo, in_hi, top, bottom in pieces:
            band_src = src.slice(1, in_lo, in_hi - in_lo)
            band_dst = dst.slice(1, r0, r1 - r0)
            self.emit(packet, [band_src, *reads[1:]], [band_dst], src=band_src, dst=band_dst,
                      pad=[top, pad[1], bottom, pad[3]], **fields)

    def fail(self, message: str) -> CompileError:
        node = self.node
        return CompileError(message, node.label if node else None, node.op if node else None)

    # -- concat planning --------------------------------------------------------------------

    def _plan_concats(self) -> None:
        """Producers of concat inputs write into the concat output directly (no BDMA copy)."""
        graph = self.graph
        producers, consumers = graph.producers(), graph.consumers()
        outputs = graph.output_values()
        for node in reversed(graph.nodes):
            if node.op != "Concat":
                continue
            shape = graph.shapes[node.outputs[0]]
            is8 = node.name in self.int8
            planned = self.preassigned.get(node.outputs[0])
            if planned is None:
                zp = self.qp[node.outputs[0]].zero_point if is8 else 0
                planned = self._alloc(node.outputs[0], shape, I8 if is8 else F32, default_order(len(shape)), zp)
                self.preassigned[node.outputs[0]] = planned
            axis = _axis(node.attr("axis", 1 if graph.opset < 4 else None), len(shape), node, "axis")
            self._tag += 1
            self.concat_tags[node.outputs[0]] = self._tag
            start = 0
            for name in node.inputs:
                length = graph.shapes[name][axis]
                producer = producers.get(name)
                eligible = (producer is not None and producer.op not in ALIASING and producer.op != "Concat"
                            and name not in outputs and name not in self.preassigned
                            and node.inputs.count(name) == 1 and len(producer.outputs) >= 1
                            and producer.outputs[0] == name and (producer.name in self.int8) == is8
                            and all(c.op != "Concat" or c is node for c in consumers.get(name, [])))
                if eligible:
                    self.preassigned[name] = planned.slice(axis, start, length, tag=self._tag)
                start += length

    # -- helpers ----------------------------------------------------------------------------

    def _requant(self, out: str, real: np.ndarray | float, act: Act | None, channels: int) -> RequantSpec:
        """Per-channel (a table in the weights BO) or per-tensor requantisation to `out`'s params."""
        lo, hi = self._clamp(out, act)
        real = np.asarray(real, np.float64)
        if real.ndim == 0 or np.allclose(real, real.reshape(-1)[0]):
            m, s = quant.quantize_multiplier(float(real.reshape(-1)[0]))
            return RequantSpec(m, s, lo, hi)
        table = quant.requant_table(np.broadcast_to(real, (channels,)))
        return RequantSpec(act_min=lo, act_max=hi, table=self.const(table, I32, ""))

    def _clamp(self, out: str, act: Act | None) -> tuple[int, int]:
        if act is None:
            return quant.QMIN, quant.QMAX
        params = self.qp[out]
        if act.op == "Relu":
            return max(params.q(0.0), quant.QMIN), quant.QMAX
        if act.op == "Clip":
            return params.q(act.clip_min), params.q(act.clip_max)
        raise self.fail(f"activation {act.op} has no int8 form")

    def _spatial(self, view: View) -> View:
        """NHWC arrangement of a 4-D (N,C,H,W) or 3-D (N,C,L -> N,1,L,C) value."""
        if view.rank == 4:
            return view.permute(NHWC)
        if view.rank == 3:
            n, c, length = view.shape
            sn, sc, sl = view.strides
            return replace(view, shape=(n, 1, length, c), strides=(sn, 0, sl, sc))
        raise self.fail(f"expected a 3-D or 4-D input, got shape {view.shape}")

    def _copy(self, src: View, dst: View) -> None:
        self.emit("BDMA", [src], [dst], op=defs.DRM_EMUDEV_BDMA_COPY, src=src, dst=dst)

    def _reshape_into(self, src: View, dst: View) -> None:
        """dst = src's elements in row-major order (RUBIK RESHAPE), 4-D views of both."""
        try:
            s4, d4 = src.as4d(), dst.as4d()
        except ValueError as e:
            raise self.fail(str(e)) from None
        self.emit("RUBIK", [src], [dst], op=defs.DRM_EMUDEV_RUBIK_RESHAPE, src=s4, dst=d4)

    def _pads(self, node: Node, in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> list[int]:
        """[top, left, bottom, right] from pads or auto_pad."""
        spatial = len(in_hw)
        auto = node.attr("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                small, large = total // 2, total - total // 2
                begin.append(small if auto == "SAME_UPPER" else large)
                end.append(large if auto == "SAME_UPPER" else small)
            pads = begin + end
        elif auto == "VALID":
            pads = [0] * (2 * spatial)
        elif auto == "NOTSET":
            pads = list(node.attr("pads", [0] * (2 * spatial)))
        else:
            raise self.fail(f"unsupported auto_pad {auto}")
        if any(p < 0 for p in pads):
            raise self.fail(f"negative pads {pads} are not supported")
        if spatial == 1:
            return [0, pads[0], 0, pads[1]]
        return [pads[0], pads[1], pads[2], pads[3]]

    # -- convolution and matrix products -----------------------------------------------------

    def _op_Conv(self, node: Node) -> None:
        graph = self.graph
        x_name, w_name = node.inputs[0], node.inputs[1]
        if not graph.is_const(w_name):
            raise self.fail("Conv with non-constant weights is not supported")
        rank = len(graph.shapes[x_name])
        if rank not in (3, 4):
            raise self.fail(f"only 1-D and 2-D convolutions are supported (input rank {rank})")
        weight = graph.consts[w_name].astype(np.float32)
        if rank == 3:
            weight = weight[:, :, None, :]
        out_channels = weight.shape[0]
        strides = list(node.attr("strides", [1] * (rank - 2)))
        dilations = list(node.attr("dilations", [1] * (rank - 2)))
        kernel = list(node.attr("kernel_shape", weight.shape[2 + (4 - rank):]))
        in_hw = graph.shapes[x_name][2:]
        pad = self._pads(node, in_hw, kernel, strides, dilations)
        if rank == 3:
            strides, dilations = [1, strides[0]], [1, dilations[0]]
        groups = int(node.attr("group", 1))
        bias = np.zeros(out_channels, np.float64)
        if len(node.inputs) > 2 and node.inputs[2]:
            if not graph.is_const(node.inputs[2]):
                raise self.fail("Conv with a non-constant bias is not supported")
            bias = bias + graph.consts[node.inputs[2]].astype(np.float64)
        if node.attrs.get("_bias") is not None:
            bias = bias + node.attrs["_bias"]
        ohwi = np.ascontiguousarray(weight.transpose(0, 2, 3, 1))
        self._conv(node, x_name, ohwi, bias, strides, dilations, pad, groups, node.act)

    def _conv(self, node: Node, x_name: str, ohwi: np.ndarray, bias: np.ndarray, strides: Sequence[int],
              dilations: Sequence[int], pad: Sequence[int], groups: int, act: Act | None) -> None:
        is8 = node.name in self.int8
        x = self.value(x_name, is8)
        out = self.output(node)
        fields: dict[str, object] = dict(stride=list(strides), dilation=list(dilations), pad=list(pad),
                                         groups=groups)
        if is8:
            sx, so = self.qp[x_name].scale, self.qp[node.outputs[0]].scale
            wq, ws = quant.quantize_weights(ohwi, 0)
            weight = self.const(wq, I8, f"{node.name}::weight")
            fields["bias_va"] = Addr(self.const(quant.bias_int32(bias, sx * ws), I32, f"{node.name}::bias"))
            fields["requant"] = self._requant(node.outputs[0], sx * ws / so, act, ohwi.shape[0])
        else:
            weight = self.const(ohwi, F32, f"{node.name}::weight")
            fields["bias_va"] = Addr(self.const(bias, F32, f"{node.name}::bias")) if np.any(bias) else 0
            fields["act"] = act
        bias_reads = [fields["bias_va"].view] if isinstance(fields["bias_va"], Addr) else []
        if isinstance(fields.get("requant"), RequantSpec) and fields["requant"].table is not None:
            bias_reads.append(fields["requant"].table)
        pad = fields.pop("pad")
        self.emit_banded("CONV", [x, weight, *bias_reads], [out], src=self._spatial(x), dst=self._spatial(out),
                         kernel_h=ohwi.shape[1], stride_h=strides[0], dilation_h=dilations[0], pad=pad, weight=weight,
                         **fields)

    def _op_BatchNormalization(self, node: Node) -> None:
        graph = self.graph
        if len([o for o in node.outputs if o]) > 1 or node.attr("training_mode", 0):
            raise self.fail("BatchNormalization in training mode is not supported")
        if not all(graph.is_const(n) for n in node.inputs[1:5]):
            raise self.fail("BatchNormalization with non-constant statistics is not supported")
        gamma, beta, mean, var = (graph.consts[n].astype(np.float64) for n in node.inputs[1:5])
        scale = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
        shift = beta - mean * scale
        x_name = node.inputs[0]
        if node.name in self.int8:  # a depthwise 1x1 convolution has an int8 form, SDP scale/bias has not
            channels = scale.shape[0]
            ohwi = scale.reshape(channels, 1, 1, 1).astype(np.float32)
            self._conv(node, x_name, ohwi, shift, [1, 1], [1, 1], [0, 0, 0, 0], channels, node.act)
            return
        x = self.value(x_name, False)
        rank = x.rank
        if rank < 2:
            raise self.fail(f"BatchNormalization of a rank-{rank} tensor")
        out = self.output(node, order=physical_order(x) if x.rank != 4 else None)
        perm = [a for a in range(rank) if a != 1] + [1]
        sv = self.const(scale, F32, f"{node.name}::scale")
        bv = self.const(shift, F32, f"{node.name}::shift")
        self._sdp(defs.DRM_EMUDEV_SDP_NONE, x.permute(perm), None, out.permute(perm), reads=[x, sv, bv],
                  writes=[out], act=node.act, scale_va=Addr(sv), bias_va=Addr(bv))

    def _op_Gemm(self, node: Node) -> None:
        graph = self.graph
        a_name, b_name = node.inputs[0], node.inputs[1]
        c_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
        out_shape = graph.shapes[node.outputs[0]]
        n = out_shape[1]
        bias = np.zeros(n, np.float64)
        post_c = None
        if c_name is not None:
            if graph.is_const(c_name) and graph.consts[c_name].size in (1, n) and (
                    graph.consts[c_name].ndim == 0 or graph.consts[c_name].shape[-1] == graph.consts[c_name].size):
                bias = bias + beta * np.broadcast_to(graph.consts[c_name].reshape(-1), (n,))
            else:
                post_c = c_name
        if node.attrs.get("_bias") is not None:
            bias = bias + node.attrs["_bias"]
        self._matmul(node, a_name, b_name, trans_a, trans_b, alpha, bias, post_c, beta)

    def _op_MatMul(self, node: Node) -> None:
        bias = node.attrs.get("_bias")
        self._matmul(node, node.inputs[0], node.inputs[1], False, False, 1.0,
                     None if bias is None else np.asarray(bias, np.float64), None, 1.0)

    def _matmul(self, node: Node, a_name: str, b_name: str, trans_a: bool, trans_b: bool, alpha: float,
                bias: np.ndarray | None, post_c: str | None, beta: float) -> None:
        graph = self.graph
        is8 = node.name in self.int8
        out_name = node.outputs[0]
        a_shape, b_shape = graph.shapes[a_name], graph.shapes[b_name]
        a_mat = (1, *a_shape) if len(a_shape) == 1 else a_shape
        b_mat = (*b_shape, 1) if len(b_shape) == 1 else b_shape
        m, k = (a_mat[-1], a_mat[-2]) if trans_a else (a_mat[-2], a_mat[-1])
        n = b_mat[-2] if trans_b else b_mat[-1]
        batch = tuple(int(d) for d in np.broadcast_shapes(a_mat[:-2], b_mat[:-2]))
        keep = [i for i, d in enumerate(batch) if d != 1]
        if len(keep) > 2:
            raise self.fail(f"MatMul with more than two batch dims {batch} is not supported")
        batch4 = (1,) * (2 - len(keep)) + tuple(batch[i] for i in keep)
        if is8 and post_c is not None:
            raise self.fail("int8 Gemm with a full C matrix is not supported")
        act = node.act if post_c is None else None
        out = self.output(node)
        final = out.reshape((*batch4, m, n))
        dst = final if final is not None else self._alloc(f"{out_name}::gemm", (*batch4, m, n), out.dtype,
                                                           zero_point=out.zero_point)
        product = dst if post_c is None else self._alloc(f"{out_name}::ab", (*batch4, m, n), F32)
        a = self._gemm_operand(a_name, is8, trans_a, batch, keep, (m, k), broadcast=True)
        fields: dict[str, object] = {"flags": 0}
        if graph.is_const(b_name):
            bm = graph.consts[b_name].astype(np.float64)
            bm = bm[:, None] if bm.ndim == 1 else bm
            bm = np.swapaxes(bm, -1, -2) if trans_b else bm  # [.., K, N]
            if a_name in self.row_order:  # A was flattened in its stored (NHWC) order: rows follow
                bm = bm[..., self.row_order[a_name], :]
            bm = bm.reshape((1,) * (len(batch) + 2 - bm.ndim) + bm.shape) * alpha
            bm = bm.reshape((*[bm.shape[i] for i in keep], k, n))
            bm = bm.reshape((1,) * (4 - bm.ndim) + bm.shape)
            bt = np.ascontiguousarray(np.swapaxes(bm, -1, -2))  # [b0, b1, N, K]: rows are output channels
            fields["flags"] = defs.DRM_EMUDEV_GEMM_TRANSPOSE_B
            if is8:
                wq, w_scale = quant.quantize_weights(np.moveaxis(bt, 2, 0), 0)
                b = self.const(np.moveaxis(wq, 0, 2), I8, f"{node.name}::b")
            else:
                b, w_scale = self.const(bt, F32, f"{node.name}::b"), None
        else:
            if alpha != 1.0:
                raise self.fail("Gemm alpha != 1 with a non-constant B is not supported")
            b = self._gemm_operand(b_name, is8, trans_b, batch, keep, (k, n), broadcast=False)
            w_scale = np.array([self.qp[b_name].scale]) if is8 else None
        reads = [a, b]
        bias_vec = bias if bias is not None else np.zeros(n)
        if is8:
            assert w_scale is not None
            scales = self.qp[a_name].scale * np.broadcast_to(w_scale, (n,))
            bias_view = self.const(quant.bias_int32(bias_vec, scales), I32, f"{node.name}::bias")
            fields["bias_va"] = Addr(bias_view)
            fields["requant"] = self._requant(out_name, scales / self.qp[out_name].scale, act, n)
            reads.append(bias_view)
        else:
            fields["bias_va"] = 0
            if np.any(bias_vec):
                bias_view = self.const(bias_vec, F32, f"{node.name}::bias")
                fields["bias_va"] = Addr(bias_view)
                reads.append(bias_view)
            fields["act"] = act
        self.emit("GEMM", reads, [product], a=a, b=b, dst=product, **fields)
        if post_c is not None:
            if beta != 1.0:
                if not graph.is_const(post_c):
                    raise self.fail("Gemm beta != 1 with a non-constant C is not supported")
                c = self.const(graph.consts[post_c] * beta, F32, f"{node.name}::c")
            else:
                c = self.value(post_c, False)
            self._binary_views(defs.DRM_EMUDEV_SDP_ADD, product, c, dst, node.act)
        if final is None:
            self._reshape_into(dst, out)

    def _gemm_operand(self, name: str, is8: bool, transposed: bool, batch: tuple[int, ...], keep: list[int],
                      rows_cols: tuple[int, int], broadcast: bool) -> View:
        """An activation operand as [B0, B1, rows, cols]: a transpose is a stride swap, a broadcast batch a 0
        stride (a must span the whole batch; b may keep 1s)."""
        view = self.value(name, is8)
        if view.rank == 1:
            reshaped = view.reshape((1, view.shape[0]) if broadcast else (view.shape[0], 1))
            assert reshaped is not None
            view = reshaped
        if transposed:
            view = view.permute([*range(view.rank - 2), view.rank - 1, view.rank - 2])
        pad = len(batch) + 2 - view.rank
        view = replace(view, shape=(1,) * pad + view.shape, strides=(0,) * pad + view.strides)
        if broadcast:
            view = view.broadcast((*batch, *view.shape[-2:]))
        dims = [view.shape[i] for i in keep]
        strides = [view.strides[i] for i in keep]
        pad = 2 - len(keep)
        view = replace(view, shape=(*(1,) * pad, *dims, *view.shape[-2:]),
                       strides=(*(0,) * pad, *strides, *view.strides[-2:]))
        if view.shape[-2:] != rows_cols:
            raise self.fail(f"operand '{name}' does not fit a {rows_cols} matrix")
        return view

    # -- element-wise (SDP) -------------------------------------------------------------------

    def _sdp(self, op: int, src: View, src2: View | None, dst: View, reads: Sequence[View], writes: Sequence[View],
             act: Act | None = None, **extra: object) -> None:
        order = physical_order(dst)
        src, dst = src.permute(order), dst.permute(order)
        src2 = src2.permute(order) if src2 is not None else None
        fields: dict[str, object] = {"op": op, "src": src, "dst": dst, **extra}
        if src2 is not None:
            fields["src2"] = src2
        if dst.dtype == F32:
            fields["act"] = act
        self.emit("SDP", reads, writes, **fields)

    def _binary_views(self, op: int, a: View, b: View, out: View, act: Act | None) -> None:
        self._sdp(op, a.broadcast(out.shape), b.broadcast(out.shape), out, [a, b], [out], act)

    def _binary(self, node: Node, op: int, a_name: str, b_name: str, out: View, out_name: str,
                act: Act | None, b_const: np.ndarray | None = None) -> None:
        is8 = out.dtype == I8
        a = self.value(a_name, is8)
        if b_const is not None:
            b = self.const(b_const, F32, f"{node.name}::c") if not is8 else self.const(
                _const_qparams(b_const).quantize(b_const), I8, f"{node.name}::c", _const_qparams(b_const).zero_point)
            b_scale = _const_qparams(b_const).scale
        else:
            qp = self.qp.get(out_name) if op in (defs.DRM_EMUDEV_SDP_MAX, defs.DRM_EMUDEV_SDP_MIN) else None
            b = self.value(b_name, is8, qp=qp)
            b_scale = self._scale_of(b_name, b) if is8 else 1.0
        if op in (defs.DRM_EMUDEV_SDP_MAX, defs.DRM_EMUDEV_SDP_MIN) and self.graph.is_const(a_name) and is8:
            a = self.value(a_name, True, qp=self.qp.get(out_name))
        if not is8:
            self._binary_views(op, a, b, out, act)
            return
        a_scale = self._scale_of(a_name, a)
        so = self.qp[out_name].scale
        extra: dict[str, object] = {}
        lo, hi = self._clamp(out_name, act)
        if op in (defs.DRM_EMUDEV_SDP_ADD, defs.DRM_EMUDEV_SDP_SUB):
            m1, s1, m2, s2, mo, sho = quant.add_params(a_scale, b_scale, so)
            extra = dict(src_multiplier=m1, src_shift=s1, src2_multiplier=m2, src2_shift=s2, left_shift=20,
                         requant=RequantSpec(mo, sho, lo, hi))
        elif op == defs.DRM_EMUDEV_SDP_MUL:
            m, s = quant.quantize_multiplier(a_scale * b_scale / so)
            extra = dict(requant=RequantSpec(m, s, lo, hi))
        else:  # MAX / MIN: raw values, shared quantisation
            extra = dict(requant=RequantSpec(0, 0, lo, hi))
        self._sdp(op, a.broadcast(out.shape), b.broadcast(out.shape), out, [a, b], [out], None, **extra)

    def _scale_of(self, name: str, view: View) -> float:
        if self.graph.is_const(name):
            return _const_qparams(self.graph.consts[name]).scale
        return self.qp[name].scale

    def _elementwise_output(self, node: Node) -> View:
        """Output stored like its full-shape input (keeps NHWC tensors NHWC)."""
        shape = self.graph.shapes[node.outputs[0]]
        for name in node.inputs:
            if name and not self.graph.is_const(name) and self.graph.shapes[name] == shape and name in self.views:
                return self.output(node, order=physical_order(self.views[name]))
        return self.output(node)

    def _variadic(self, node: Node, op: int) -> None:
        inputs = [n for n in node.inputs if n]
        out = self._elementwise_output(node)
        if len(inputs) == 1:
            self._unary(node, inputs[0], out, node.act)
            return
        left = inputs[0]
        for i, right in enumerate(inputs[1:], start=1):
            last = i == len(inputs) - 1
            target = out if last else self._alloc(f"{node.outputs[0]}::{i}", out.shape, out.dtype,
                                                  physical_order(out), out.zero_point)
            name = left
            if not last:  # partial results share the output's quantisation
                self.views[f"{node.outputs[0]}::{i}"] = target
                if node.name in self.int8:
                    self.qp[f"{node.outputs[0]}::{i}"] = self.qp[node.outputs[0]]
            self._binary(node, op, name, right, target, node.outputs[0], node.act if last else None)
            left = f"{node.outputs[0]}::{i}"

    def _op_Add(self, node: Node) -> None:
        self._variadic(node, defs.DRM_EMUDEV_SDP_ADD)

    _op_Sum = _op_Add

    def _op_Sub(self, node: Node) -> None:
        self._variadic(node, defs.DRM_EMUDEV_SDP_SUB)

    def _op_Mul(self, node: Node) -> None:
        self._variadic(node, defs.DRM_EMUDEV_SDP_MUL)

    def _op_Max(self, node: Node) -> None:
        self._variadic(node, defs.DRM_EMUDEV_SDP_MAX)

    def _op_Min(self, node: Node) -> None:
        self._variadic(node, defs.DRM_EMUDEV_SDP_MIN)

    def _op_Div(self, node: Node) -> None:
        if not self.graph.is_const(node.inputs[1]):
            raise self.fail("Div by a non-constant tensor is not supported (the device has no divide)")
        divisor = self.graph.consts[node.inputs[1]].astype(np.float64)
        if np.any(divisor == 0):
            raise self.fail("Div by a constant containing zero")
        out = self._elementwise_output(node)
        self._binary(node, defs.DRM_EMUDEV_SDP_MUL, node.inputs[0], "", out, node.outputs[0], node.act,
                     b_const=(1.0 / divisor).astype(np.float32))

    def _unary(self, node: Node, x_name: str, out: View, act: Act | None) -> None:
        is8 = out.dtype == I8
        x = self.value(x_name, is8)
        if not is8:
            self._sdp(defs.DRM_EMUDEV_SDP_NONE, x, None, out, [x], [out], act)
            return
        lo, hi = self._clamp(node.outputs[0], act)
        m, s = quant.quantize_multiplier(self.qp[x_name].scale / self.qp[node.outputs[0]].scale)
        self._sdp(defs.DRM_EMUDEV_SDP_NONE, x, None, out, [x], [out], None, requant=RequantSpec(m, s, lo, hi))

    def _activation(self, node: Node) -> None:
        out = self._elementwise_output(node)
        self._unary(node, node.inputs[0], out, activation_of(self.graph, node))

    _op_Relu = _activation
    _op_Clip = _activation
    _op_LeakyRelu = _activation
    _op_Sigmoid = _activation
    _op_Tanh = _activation

    # -- pooling (PDP) ------------------------------------------------------------------------

    def _pool(self, node: Node, op: int, global_pool: bool) -> None:
        graph = self.graph
        if len([o for o in node.outputs if o]) > 1:
            raise self.fail("the Indices output of MaxPool is not supported")
        x_name = node.inputs[0]
        shape = graph.shapes[x_name]
        if len(shape) not in (3, 4):
            raise self.fail(f"only 1-D and 2-D pooling is supported (input shape {shape})")
        in_hw = list(shape[2:])
        out_hw = list(graph.shapes[node.outputs[0]][2:])
        if global_pool:
            kernel, strides, pads = in_hw, [1] * len(in_hw), [0, 0, 0, 0]
        else:
            kernel = list(node.attr("kernel_shape"))
            strides = list(node.attr("strides", [1] * len(kernel)))
            dilations = list(node.attr("dilations", [1] * len(kernel)))
            if any(d != 1 for d in dilations):
                raise self.fail(f"pooling dilations {dilations} are not supported by PDP")
            if node.attr("storage_order", 0):
                raise self.fail("MaxPool storage_order=1 is not supported")
            pads = self._pads(node, in_hw, kernel, strides, dilations)
        if len(in_hw) == 1:
            in_hw, out_hw, kernel, strides = [1, in_hw[0]], [1, out_hw[0]], [1, kernel[0]], [1, strides[0]]
        count_pad = bool(node.attr("count_include_pad", 0)) and op == defs.DRM_EMUDEV_PDP_AVG
        # ceil_mode (and any output size above the floor formula): extend the bottom/right padding so
        # that the floor formula gives the size ONNX infers
        declared = list(pads)
        for axis in range(2):
            need = (out_hw[axis] - 1) * strides[axis] + kernel[axis] - in_hw[axis] - pads[axis]
            pads[axis + 2] = max(pads[axis + 2], need)
        for axis in range(2):
            if pads[axis] >= kernel[axis] or pads[axis + 2] >= kernel[axis]:
                raise self.fail(f"padding {pads} not below the pooling window {kernel} (a window could cover only "
                                "padding), which PDP does not take")
            if (out_hw[axis] - 1) * strides[axis] >= in_hw[axis] + pads[axis]:
                raise self.fail("a pooling window would start in the padding (ceil_mode), which PDP does not take")
        is8 = node.name in self.int8
        x = self.value(x_name, is8)
        out = self.output(node)
        # count_include_pad counts the declared padding but not what ceil_mode adds: PDP then averages
        # over the real elements and an SDP rescales each output position by real / ONNX count
        rescale = count_pad and pads != declared
        if rescale and is8:
            raise self.fail("int8 AveragePool with ceil_mode and count_include_pad=1 is not supported")
        flags = defs.DRM_EMUDEV_PDP_COUNT_PAD if count_pad and not rescale else 0
        pooled = self._alloc(f"{node.outputs[0]}::avg", out.shape, F32, physical_order(out)) if rescale else out
        self.emit_banded("PDP", [x], [pooled], src=self._spatial(x), dst=self._spatial(pooled), kernel_h=kernel[0],
                         stride_h=strides[0], dilation_h=1, pad=pads, op=op, flags=flags, kernel=list(kernel),
                         stride=list(strides))
        if rescale:
            factor = np.outer(*(_avg_rescale(in_hw[a], out_hw[a], kernel[a], strides[a], declared[a],
                                             declared[a + 2]) for a in range(2)))
            shape = (1, 1, *factor.shape) if out.rank == 4 else (1, 1, factor.shape[1])
            f = self.const(factor.reshape(shape), F32, f"{node.name}::count")
            self._sdp(defs.DRM_EMUDEV_SDP_MUL, pooled, f.broadcast(out.shape), out, [pooled, f], [out])

    def _op_MaxPool(self, node: Node) -> None:
        self._pool(node, defs.DRM_EMUDEV_PDP_MAX, False)

    def _op_AveragePool(self, node: Node) -> None:
        self._pool(node, defs.DRM_EMUDEV_PDP_AVG, False)

    def _op_GlobalAveragePool(self, node: Node) -> None:
        self._pool(node, defs.DRM_EMUDEV_PDP_AVG, True)

    def _op_GlobalMaxPool(self, node: Node) -> None:
        self._pool(node, defs.DRM_EMUDEV_PDP_MAX, True)

    # -- cross-channel (CDP) ------------------------------------------------------------------

    def _op_LRN(self, node: Node) -> None:
        size = int(node.attr("size"))
        if size % 2 == 0:
            raise self.fail(f"LRN size {size} is even; CDP takes odd window sizes only")
        x = self.value(node.inputs[0], False)
        if x.rank < 3:
            raise self.fail(f"LRN of a rank-{x.rank} tensor")
        out = self.output(node, int8=False)
        perm = [a for a in range(x.rank) if a != 1] + [1]
        self.emit("CDP", [x], [out], op=defs.DRM_EMUDEV_CDP_LRN, size=size, src=x.permute(perm),
                  dst=out.permute(perm), alpha=float(node.attr("alpha", 1e-4)), beta=float(node.attr("beta", 0.75)),
                  bias=float(node.attr("bias", 1.0)))

    def _op_Softmax(self, node: Node) -> None:
        x = self.value(node.inputs[0], False)
        rank = x.rank
        if self.graph.opset >= 13:
            axis = _axis(node.attr("axis", -1), rank, node, "axis")
            out = self.output(node, order=physical_order(x), int8=False)
            perm = [a for a in range(rank) if a != axis] + [axis]
            self.emit("CDP", [x], [out], op=defs.DRM_EMUDEV_CDP_SOFTMAX, size=0, src=x.permute(perm),
                      dst=out.permute(perm))
            return
        # before opset 13: softmax over the flattened dims [axis, rank)
        axis = _axis(node.attr("axis", 1), rank, node, "axis")
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        cols = int(np.prod(x.shape[axis:], dtype=np.int64))
        src = x.reshape((rows, cols))
        if src is None:
            dense = self._alloc(f"{node.outputs[0]}::dense", x.shape, F32)
            self._reshape_into(x, dense)
            src = dense.reshape((rows, cols))
        out = self.output(node, int8=False)
        dst = out.reshape((rows, cols))
        dense_out = dst is None
        if dense_out:
            dense = self._alloc(f"{node.outputs[0]}::softmax", (rows, cols), F32)
            dst = dense
        assert src is not None and dst is not None
        self.emit("CDP", [src], [dst], op=defs.DRM_EMUDEV_CDP_SOFTMAX, size=0, src=src, dst=dst)
        if dense_out:
            self._reshape_into(dst, out)

    # -- data movement ------------------------------------------------------------------------

    def _op_Concat(self, node: Node) -> None:
        graph = self.graph
        is8 = node.name in self.int8
        out = self.output(node)
        axis = _axis(node.attr("axis", 1 if graph.opset < 4 else None), out.rank, node, "axis")
        start = 0
        for name in node.inputs:
            length = graph.shapes[name][axis]
            target = out.slice(axis, start, length, tag=self.concat_tags.get(node.outputs[0]))
            start += length
            source = self.value(name, is8, qp=self.qp.get(node.outputs[0]) if is8 else None)
            if source.storage is target.storage and source.offset == target.offset and \
                    source.strides == target.strides:
                continue  # produced in place
            if is8 and source.zero_point != out.zero_point and not graph.is_const(name):
                m, s = quant.quantize_multiplier(self.qp[name].scale / self.qp[node.outputs[0]].scale)
                self._sdp(defs.DRM_EMUDEV_SDP_NONE, source, None, target, [source], [target], None,
                          requant=RequantSpec(m, s))
            else:
                self._copy(source, target)

    def _alias_or_copy(self, node: Node, x_name: str, shape: Sequence[int]) -> None:
        """A free view when the bytes are already in the new shape's order, else a RUBIK reshape."""
        is8 = node.name in self.int8
        x = self.value(x_name, is8)
        out_name = node.outputs[0]
        view = x.reshape(shape)
        if view is not None and out_name not in self.preassigned:
            self.views[out_name] = view
            return
        if out_name not in self.preassigned and self._flatten_into_weights(x, out_name, shape):
            return
        out = self.output(node, shape=shape)
        self._reshape_into(x, out)

    def _flatten_into_weights(self, x: View, out_name: str, shape: Sequence[int]) -> bool:
        """Flatten of an NHWC tensor that only feeds matrix products with constant weights: the bytes are
        flattened as stored (free) and the weights' rows permuted to match at compile time, instead of a
        RUBIK reorder to ONNX's NCHW order."""
        graph = self.graph
        if len(shape) != 2 or x.rank < 3 or shape[0] != x.shape[0] or out_name in graph.output_values():
            return False
        users = graph.consumers().get(out_name, [])
        for user in users:
            if user.op not in ("Gemm", "MatMul") or user.inputs[0] != out_name or user.inputs.count(out_name) != 1 \
                    or not graph.is_const(user.inputs[1]):
                return False
            if not (user.op == "MatMul" and graph.consts[user.inputs[1]].ndim == 2) and not (
                    user.op == "Gemm" and not user.attr("transA", 0)):
                return False
        order = physical_order(x)
        if not users or order[0] != 0:
            return False
        flat = x.permute(order).reshape(shape)
        if flat is None:
            return False
        rows = np.arange(int(np.prod(x.shape[1:]))).reshape(x.shape[1:])
        self.views[out_name] = flat
        self.row_order[out_name] = rows.transpose([a - 1 for a in order[1:]]).reshape(-1)
        return True

    def _op_Reshape(self, node: Node) -> None:
        self._alias_or_copy(node, node.inputs[0], self.graph.shapes[node.outputs[0]])

    _op_Flatten = _op_Reshape
    _op_Squeeze = _op_Reshape
    _op_Unsqueeze = _op_Reshape

    def _op_Identity(self, node: Node) -> None:
        self._alias_or_copy(node, node.inputs[0], self.graph.shapes[node.outputs[0]])

    def _op_Cast(self, node: Node) -> None:
        if self.graph.dtypes.get(node.outputs[0]) != F32 or self.graph.dtypes.get(node.inputs[0]) != F32:
            raise self.fail("Cast between float32 tensors only (other casts must fold to constants)")
        self._alias_or_copy(node, node.inputs[0], self.graph.shapes[node.outputs[0]])

    def _op_Transpose(self, node: Node) -> None:
        is8 = node.name in self.int8
        x = self.value(node.inputs[0], is8)
        perm = [int(p) % max(x.rank, 1) for p in node.attr("perm", list(reversed(range(x.rank))))]
        in_shape, perm = _simplify_transpose(x.shape, perm)
        if len(perm) > 4:
            raise self.fail(f"Transpose of shape {x.shape} needs {len(perm)} dims after merging; the device has four")
        src = x.reshape(in_shape)
        if src is None:
            dense = self._alloc(f"{node.outputs[0]}::dense", x.shape, x.dtype, zero_point=x.zero_point)
            self._reshape_into(x, dense)
            src = dense.reshape(in_shape)
            assert src is not None
        out = self.output(node)
        out_shape = [in_shape[p] for p in perm]
        dst = out.reshape(out_shape)
        staged = dst is None
        if staged:
            dst = self._alloc(f"{node.outputs[0]}::t", out_shape, out.dtype, zero_point=out.zero_point)
        assert dst is not None
        pad = 4 - len(perm)
        perm4 = list(range(pad)) + [p + pad for p in perm]
        self.emit("RUBIK", [src], [dst], op=defs.DRM_EMUDEV_RUBIK_TRANSPOSE, src=src.as4d(), dst=dst.as4d(),
                  perm=perm4)
        if staged:
            self._reshape_into(dst, out)

    def _op_Slice(self, node: Node) -> None:
        graph = self.graph
        is8 = node.name in self.int8
        x = self.value(node.inputs[0], is8)
        rank = x.rank
        if graph.opset < 10:
            starts, ends = node.attr("starts"), node.attr("ends")
            axes, steps = node.attr("axes", list(range(len(starts)))), [1] * len(starts)
        else:
            for name in node.inputs[1:]:
                if name and not graph.is_const(name):
                    raise self.fail("Slice with non-constant starts/ends/axes/steps is not supported")
            starts = graph.consts[node.inputs[1]].tolist()
            ends = graph.consts[node.inputs[2]].tolist()
            axes = graph.consts[node.inputs[3]].tolist() if len(node.inputs) > 3 and node.inputs[3] \
                else list(range(len(starts)))
            steps = graph.consts[node.inputs[4]].tolist() if len(node.inputs) > 4 and node.inputs[4] \
                else [1] * len(starts)
        view = x
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            axis = _axis(axis, rank, node, "axes")
            if step <= 0:
                raise self.fail("Slice with a non-positive step is not supported (no negative strides on the device)")
            begin, stop, _ = slice(int(start), int(end), int(step)).indices(x.shape[axis])
            length = max(0, -(-(stop - begin) // step))
            view = view.slice(axis, begin, length, step)
        if view.shape != graph.shapes[node.outputs[0]]:
            raise self.fail(f"Slice result {view.shape} differs from the inferred {graph.shapes[node.outputs[0]]}")
        if node.outputs[0] in self.preassigned:
            out = self.output(node)
            self._copy(view, out)
        else:
            self.views[node.outputs[0]] = view

    def _op_Split(self, node: Node) -> None:
        """Every output is a free view: a slice of the input."""
        graph = self.graph
        x = self.value(node.inputs[0], node.name in self.int8)
        axis = _axis(node.attr("axis", 0), x.rank, node, "axis")
        start = 0
        for name in node.outputs:
            if not name:
                continue
            length = graph.shapes[name][axis]
            view = x.slice(axis, start, length)
            start += length
            if name in self.preassigned:
                self._copy(view, self.output(node, index=node.outputs.index(name)))
            else:
                self.views[name] = view

    def _op_Neg(self, node: Node) -> None:
        out = self._elementwise_output(node)
        self._binary(node, defs.DRM_EMUDEV_SDP_MUL, node.inputs[0], "", out, node.outputs[0], node.act,
                     b_const=np.array(-1.0, np.float32))

    def _op_PRelu(self, node: Node) -> None:
        """max(x, 0) + slope * min(x, 0); a single slope is LEAKY_RELU."""
        graph = self.graph
        if not graph.is_const(node.inputs[1]):
            raise self.fail("PRelu with a non-constant slope is not supported")
        slope = graph.consts[node.inputs[1]].astype(np.float32)
        x = self.value(node.inputs[0], False)
        if graph.opset < 7 and slope.ndim == 1 and x.rank > 2 and slope.size == x.shape[1]:
            slope = slope.reshape(-1, *([1] * (x.rank - 2)))  # before opset 7 a 1-D slope is per channel
        out = self._elementwise_output(node)
        if slope.size == 1:
            self._sdp(defs.DRM_EMUDEV_SDP_NONE, x, None, out, [x], [out], Act("LeakyRelu", alpha=float(slope.flat[0])))
            return
        order = physical_order(out)
        positive = self._alloc(f"{node.outputs[0]}::pos", out.shape, F32, order)
        negative = self._alloc(f"{node.outputs[0]}::neg", out.shape, F32, order)
        self._sdp(defs.DRM_EMUDEV_SDP_NONE, x, None, positive, [x], [positive], Act("Relu"))
        zero = self.const(np.zeros((), np.float32), F32, "")
        self._binary_views(defs.DRM_EMUDEV_SDP_MIN, x, zero, negative, None)
        scaled = self._alloc(f"{node.outputs[0]}::scaled", out.shape, F32, order)
        self._binary_views(defs.DRM_EMUDEV_SDP_MUL, negative, self.const(slope, F32, f"{node.name}::slope"), scaled,
                           None)
        self._binary_views(defs.DRM_EMUDEV_SDP_ADD, positive, scaled, out, None)

    def _reduce(self, node: Node, op: int) -> None:
        """A reduction over the spatial axes is global pooling (PDP); other axes have no engine."""
        graph = self.graph
        shape = graph.shapes[node.inputs[0]]
        rank = len(shape)
        if graph.opset >= 18 and len(node.inputs) > 1 and node.inputs[1]:
            if not graph.is_const(node.inputs[1]):
                raise self.fail(f"{node.op} with non-constant axes is not supported")
            axes = graph.consts[node.inputs[1]].tolist()
        else:
            axes = node.attr("axes", list(range(rank)))
        axes = sorted(_axis(a, rank, node, "axes") for a in axes)
        spatial = {4: [2, 3], 3: [2]}.get(rank)
        if axes != spatial:
            raise self.fail(f"{node.op} over axes {axes} of a rank-{rank} tensor is not supported (only the spatial "
                            "axes, as global pooling)")
        is8 = node.name in self.int8
        x = self.value(node.inputs[0], is8)
        keep_shape = (*shape[:2], *([1] * (rank - 2)))
        pooled = self.output(node, shape=keep_shape)
        name = node.outputs[0]
        if tuple(graph.shapes[name]) != keep_shape:  # keepdims=0: the same bytes, fewer dims
            reshaped = pooled.reshape(graph.shapes[name])
            assert reshaped is not None
            self.views[name] = reshaped
        src = self._spatial(x)
        self.emit_banded("PDP", [x], [pooled], src=src, dst=self._spatial(pooled), kernel_h=src.shape[1],
                         stride_h=1, dilation_h=1, pad=[0, 0, 0, 0], op=op, flags=0,
                         kernel=[src.shape[1], src.shape[2]], stride=[1, 1])

    def _op_ReduceMean(self, node: Node) -> None:
        self._reduce(node, defs.DRM_EMUDEV_PDP_AVG)

    def _op_ReduceMax(self, node: Node) -> None:
        self._reduce(node, defs.DRM_EMUDEV_PDP_MAX)

    def _op_Pad(self, node: Node) -> None:
        graph = self.graph
        is8 = node.name in self.int8
        mode = node.attr("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise self.fail(f"Pad mode {mode} is not supported")
        x = self.value(node.inputs[0], is8)
        rank = x.rank
        if graph.opset < 11:
            pads, value = list(node.attr("pads")), float(node.attr("value", 0.0))
            axes = list(range(rank))
        else:
            for name in node.inputs[1:]:
                if name and not graph.is_const(name):
                    raise self.fail("Pad with non-constant pads/value/axes is not supported")
            pads = graph.consts[node.inputs[1]].tolist()
            value = float(graph.consts[node.inputs[2]]) if len(node.inputs) > 2 and node.inputs[2] else 0.0
            axes = [_axis(a, rank, node, "axes") for a in graph.consts[node.inputs[3]].tolist()] \
                if len(node.inputs) > 3 and node.inputs[3] else list(range(rank))
        if any(p < 0 for p in pads):
            raise self.fail("Pad with negative pads (cropping) is not supported")
        out = self.output(node)
        bits = int(np.array([value], F32).view(np.uint32)[0]) if not is8 else \
            int(np.array([self.qp[node.outputs[0]].q(value)], I8).view(np.uint8)[0])
        self.emit("BDMA", [], [out], op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=bits, dst=out)
        inner = out
        for i, axis in enumerate(axes):
            inner = inner.slice(axis, int(pads[i]), x.shape[axis])
        self._copy(x, inner)


def _axis(axis: int | None, rank: int, node: Node, what: str) -> int:
    if axis is None:
        raise CompileError(f"attribute {what} is required", node.label, node.op)
    axis = int(axis)
    if not -rank <= axis < rank:
        raise CompileError(f"{what} {axis} out of range for rank {rank}", node.label, node.op)
    return axis % rank


# A deliberately slow model of the engines: it only decides where jobs are cut so that none nears the
# job timeout. Fitted to packet times measured on a 2-vCPU machine and then made slower, so that whole
# networks (MLP to ResNet-50) come out 3x to 8x their measured time. A job costs a SUBMIT and a
# drain of the engines' pipeline, so a model much slower than that wastes both: one 4x slower cuts
# ResNet-50 into 45 jobs instead of 12, SqueezeNet into 6 instead of 2, and runs them 4-9% slower.
MACS_PER_SECOND = 1e10
SECONDS_PER_ELEMENT = 4e-9
SECONDS_PER_PACKET = 100e-6


def estimate_seconds(packet: str, fields: dict[str, object]) -> float:
    """Rough duration of one packet on the device."""
    def elements(name: str) -> int:
        view = fields.get(name)
        return view.size if isinstance(view, View) else 0

    seconds = SECONDS_PER_PACKET + SECONDS_PER_ELEMENT * (elements("src") + elements("a") + elements("dst"))
    if packet == "CONV":
        weight = fields["weight"]
        assert isinstance(weight, View)
        seconds += elements("dst") * int(np.prod(weight.shape[1:])) / MACS_PER_SECOND
    elif packet == "GEMM":
        a, dst = fields["a"], fields["dst"]
        assert isinstance(a, View) and isinstance(dst, View)
        seconds += dst.size * a.shape[-1] / MACS_PER_SECOND
    elif packet == "PDP":
        kernel = fields.get("kernel", [1, 1])
        assert isinstance(kernel, list)
        seconds += SECONDS_PER_ELEMENT * elements("dst") * min(kernel[0] + kernel[1], 8)
    elif packet == "CDP":
        seconds += 4 * SECONDS_PER_ELEMENT * elements("dst")
    return seconds


def _avg_rescale(size: int, out: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> np.ndarray:
    """Per output position along one axis: real elements in the window / ONNX's count_include_pad count
    (the window clipped to the declared padding, as onnxruntime and PyTorch divide)."""
    start = np.arange(out) * stride - pad_begin
    end = np.minimum(start + kernel, size + pad_end)
    real = np.minimum(start + kernel, size) - np.maximum(start, 0)
    return real / (end - start)


def _simplify_transpose(shape: Sequence[int], perm: Sequence[int]) -> tuple[list[int], list[int]]:
    """The same transpose with unit dims dropped and axes that stay neighbours merged: a rank-5 channel
    shuffle becomes a rank-3 one the device can do."""
    keep = [a for a in range(len(shape)) if shape[a] != 1]
    renumber = {a: i for i, a in enumerate(keep)}
    dims = [int(shape[a]) for a in keep]
    runs: list[list[int]] = []
    for p in (renumber[p] for p in perm if shape[p] != 1):
        if runs and runs[-1][-1] + 1 == p:
            runs[-1].append(p)
        else:
            runs.append([p])
    order = sorted(range(len(runs)), key=lambda r: runs[r][0])
    in_shape = [int(np.prod([dims[a] for a in runs[r]])) for r in order]
    new_perm = [order.index(r) for r in range(len(runs))]
    return (in_shape, new_perm) if in_shape else ([1], [0])


def _const_qparams(data: np.ndarray) -> QParams:
    data = np.asarray(data, np.float64)
    return quant.qparams_for_range(float(data.min(initial=0.0)), float(data.max(initial=0.0)))

