"""Kernels: one device packet each, with the views it reads and writes.

Lowering produces kernels whose operands are Views of storages not yet placed; once the
planner has given every storage its offset, `fields()` turns them into the packet fields
libaccel encodes (Tensor descriptors, device addresses, activation and requant structs).
The read and write sets are what the scheduler orders engines by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emudev.uapi import defs
from userspace.compiler.errors import CompileError
from userspace.compiler.graph import Act
from userspace.compiler.layout import Storage, View
from userspace.libaccel.job import Tensor, activation

ENGINE_OF = {
    "CONV": defs.DRM_EMUDEV_ENGINE_CONV,
    "GEMM": defs.DRM_EMUDEV_ENGINE_CONV,
    "SDP": defs.DRM_EMUDEV_ENGINE_SDP,
    "PDP": defs.DRM_EMUDEV_ENGINE_PDP,
    "CDP": defs.DRM_EMUDEV_ENGINE_CDP,
    "BDMA": defs.DRM_EMUDEV_ENGINE_BDMA,
    "RUBIK": defs.DRM_EMUDEV_ENGINE_RUBIK,
}
ENGINE_NAMES = {value: name.removeprefix("DRM_EMUDEV_ENGINE_").lower()
                for name, value in defs.ENUMS["drm_emudev_engine"].members.items()}
ENGINE_COUNT = max(ENGINE_NAMES) + 1


@dataclass(frozen=True)
class Addr:
    """The device address of a (const) view's first byte, for bias/scale/table fields."""

    view: View


@dataclass(frozen=True)
class RequantSpec:
    """drm_emudev_requant before addresses are known: per tensor, or per channel through a table view."""

    multiplier: int = 0
    shift: int = 0
    act_min: int = -128
    act_max: int = 127
    table: View | None = None


@dataclass(eq=False)
class Kernel:
    packet: str  # ISA packet name
    fields: dict[str, Any]
    reads: list[View]
    writes: list[View]
    node: str  # label of the ONNX node it implements
    index: int = -1
    cost: float = 0.0  # estimated seconds on the device, to keep every job well inside the job timeout

    @property
    def engine(self) -> int:
        return ENGINE_OF[self.packet]

    def storages(self) -> list[Storage]:
        return [v.storage for v in (*self.reads, *self.writes)]


@dataclass
class Addresses:
    """Device address of each BO kind once the BOs exist."""

    base: dict[str, int] = field(default_factory=dict)

    def of(self, view: View) -> int:
        return self.base[view.storage.kind] + view.storage.offset + view.offset


_ACT_FN = {
    "Relu": defs.DRM_EMUDEV_ACT_RELU,
    "Clip": defs.DRM_EMUDEV_ACT_CLIP,
    "LeakyRelu": defs.DRM_EMUDEV_ACT_LEAKY_RELU,
    "Sigmoid": defs.DRM_EMUDEV_ACT_SIGMOID,
    "Tanh": defs.DRM_EMUDEV_ACT_TANH,
}


def act_struct(act: Act | None) -> defs.drm_emudev_activation:
    if act is None:
        return activation()
    if act.op == "Clip" and act.clip_min == 0.0 and act.clip_max == 6.0:
        return activation(defs.DRM_EMUDEV_ACT_RELU6)
    return activation(_ACT_FN[act.op], alpha=act.alpha, clip_min=act.clip_min, clip_max=act.clip_max)


def tensor(view: View, addresses: Addresses, node: str) -> Tensor:
    """The 4-D descriptor of a view; CompileError when the device cannot address it."""
    v = view.as4d()
    for dim in v.shape:
        if dim > defs.DRM_EMUDEV_MAX_TENSOR_DIM:
            raise CompileError(f"a tensor dim of {dim} exceeds the device maximum {defs.DRM_EMUDEV_MAX_TENSOR_DIM} "
                               f"(shape {view.shape})", node)
    if any(s < 0 for s in v.strides):
        raise CompileError(f"negative strides are not supported by the device (shape {view.shape})", node)
    return Tensor(addresses.of(v), v.shape, v.dtype, v.strides, v.zero_point)  # type: ignore[arg-type]


def resolve(kernel: Kernel, addresses: Addresses) -> dict[str, Any]:
    """The packet's fields with every view and address made concrete."""
    out: dict[str, Any] = {}
    for name, value in kernel.fields.items():
        if isinstance(value, View):
            out[name] = tensor(value, addresses, kernel.node)
        elif isinstance(value, Addr):
            out[name] = addresses.of(value.view)
        elif isinstance(value, RequantSpec):
            out[name] = defs.drm_emudev_requant(
                table_va=addresses.of(value.table) if value.table is not None else 0,
                multiplier=value.multiplier, shift=value.shift, act_min=value.act_min, act_max=value.act_max)
        elif isinstance(value, Act) or (value is None and name == "act"):
            out[name] = act_struct(value)
        else:
            out[name] = value
    return out
