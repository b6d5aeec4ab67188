"""Where tensors live: storages (byte ranges of the arena or of the weights BO) and strided views.

Every ONNX value is a View: a storage, a byte offset, its logical (ONNX) shape and one byte
stride per logical axis. The physical order is just a choice of strides: a 4-D activation
stored NHWC is a logical NCHW view with strides (HWC, 1, WC, C) * itemsize. Device packets
take 4-D descriptors, so a kernel asks for the view it needs (`permute` to NHWC for CONV,
the softmax axis last for CDP, a 0 stride to broadcast, a slice for concat) and the device
walks the same bytes. Layout conversion of model inputs and outputs happens on the CPU
through the same strides.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

ALIGN = 64
NHWC = (0, 2, 3, 1)  # physical axis order of a 4-D activation, as logical axes
_ids = itertools.count()


@dataclass(eq=False)
class Storage:
    """Bytes of one tensor (or of several aliasing ones) in the arena or the weights BO."""

    name: str
    nbytes: int
    kind: str  # "arena" (activations, written by the device) or "const" (weights BO)
    data: bytes | None = None  # initial contents of a const storage
    offset: int = -1  # in its BO, once planned
    first: int = 1 << 62  # first and last kernel touching it (liveness), set by the planner
    last: int = -1
    pinned: bool = False  # model inputs and outputs: alive for the whole job
    id: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return f"Storage({self.name!r}, {self.kind}, {self.nbytes}B @{self.offset})"


def packed_strides(shape: Sequence[int], itemsize: int, order: Sequence[int] | None = None) -> tuple[int, ...]:
    """Byte strides of `shape` stored densely with its axes in `order` (outermost first)."""
    order = list(order) if order is not None else list(range(len(shape)))
    strides = [0] * len(shape)
    step = itemsize
    for axis in reversed(order):
        strides[axis] = step
        step *= shape[axis]
    return tuple(strides)


@dataclass(frozen=True)
class View:
    """A strided window on a storage, in logical (ONNX) axis order."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    zero_point: int = 0
    # (tag, start, stop): a slice along an axis of a concat output; views of one storage with the
    # same tag and disjoint [start, stop) never share a byte, whatever their spans say
    region: tuple[int, int, int] | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def span(self) -> tuple[int, int]:
        """[first byte, last byte + 1) relative to the storage."""
        low = self.offset + sum((d - 1) * s for d, s in zip(self.shape, self.strides, strict=True) if s < 0)
        high = self.offset + sum((d - 1) * s for d, s in zip(self.shape, self.strides, strict=True) if s > 0)
        return low, high + self.itemsize

    def permute(self, perm: Sequence[int]) -> View:
        return replace(self, shape=tuple(self.shape[p] for p in perm), strides=tuple(self.strides[p] for p in perm))

    def broadcast(self, shape: Sequence[int]) -> View:
        """numpy broadcasting to `shape` with 0 strides (no copy)."""
        shape = tuple(shape)
        pad = len(shape) - self.rank
        if pad < 0:
            raise ValueError(f"cannot broadcast {self.shape} to {shape}")
        dims, strides = (1,) * pad + self.shape, (0,) * pad + self.strides
        out = []
        for have, want, stride in zip(dims, shape, strides, strict=True):
            if have == want:
                out.append(stride)
            elif have == 1:
                out.append(0)
            else:
                raise ValueError(f"cannot broadcast {self.shape} to {shape}")
        return replace(self, shape=shape, strides=tuple(out))

    def reshape(self, shape: Sequence[int]) -> View | None:
        """The same elements in row-major order as `shape` without moving a byte, or None when that
        needs a copy (numpy's no-copy reshape rules on the strides)."""
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        probe = np.lib.stride_tricks.as_strided(np.zeros(1, self.dtype), self.shape, self.strides)
        try:
            reshaped = np.reshape(probe, shape, copy=False)
        except ValueError:
            return None
        return replace(self, shape=shape, strides=tuple(int(s) for s in reshaped.strides))

    def slice(self, axis: int, start: int, length: int, step: int = 1, tag: int | None = None) -> View:
        shape, strides = list(self.shape), list(self.strides)
        offset = self.offset + start * strides[axis]
        shape[axis], strides[axis] = length, strides[axis] * step
        region = (tag, start, start + length) if tag is not None else self.region
        return replace(self, offset=offset, shape=tuple(shape), strides=tuple(strides), region=region)

    def is_packed(self) -> bool:
        """Dense row-major in logical order (dims of 1 ignored): what a free reshape needs."""
        step = self.itemsize
        for dim, stride in zip(reversed(self.shape), reversed(self.strides), strict=True):
            if dim == 1:
                continue
            if stride != step:
                return False
            step *= dim
        return True

    def as4d(self) -> View:
        """The view with exactly four dims, as packets take them: leading 1s added, or dims merged."""
        view = self
        if view.rank > 4:
            squeezed = [i for i, d in enumerate(view.shape) if d != 1]
            if len(squeezed) <= 4:
                view = replace(view, shape=tuple(view.shape[i] for i in squeezed),
                               strides=tuple(view.strides[i] for i in squeezed))
            else:
                merged = _merge_dims(view)
                if merged is None:
                    raise ValueError(f"a tensor of shape {self.shape} does not fit four device dims")
                view = merged
        pad = 4 - view.rank
        return replace(view, shape=(1,) * pad + view.shape, strides=(0,) * pad + view.strides)

    def with_quant(self, zero_point: int) -> View:
        return replace(self, zero_point=int(zero_point))


def _merge_dims(view: View) -> View | None:
    """Merge neighbouring dims whose strides nest, until at most four are left."""
    shape, strides = list(view.shape), list(view.strides)
    i = len(shape) - 2
    while len(shape) > 4 and i >= 0:
        if strides[i] == strides[i + 1] * shape[i + 1]:
            shape[i:i + 2] = [shape[i] * shape[i + 1]]
            strides[i:i + 2] = [strides[i + 1]]
        i -= 1
    if len(shape) > 4:
        return None
    return replace(view, shape=tuple(shape), strides=tuple(strides))


def new_view(storage: Storage, shape: Sequence[int], dtype: np.dtype, order: Sequence[int] | None = None,
             offset: int = 0, zero_point: int = 0) -> View:
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    return View(storage, offset, shape, packed_strides(shape, dtype.itemsize, order), dtype, zero_point)


def physical_order(view: View) -> tuple[int, ...]:
    """Logical axes sorted from the largest stride to the smallest: the view's storage order."""
    return tuple(sorted(range(view.rank), key=lambda a: (-abs(view.strides[a]), a)))


def views_overlap(a: View, b: View) -> bool:
    """Whether two views may share a byte (conservative)."""
    if a.storage is b.storage:
        if a.region and b.region and a.region[0] == b.region[0] and (
                a.region[2] <= b.region[1] or b.region[2] <= a.region[1]):
            return False
        (a0, a1), (b0, b1) = a.span(), b.span()
        return a0 < b1 and b0 < a1
    if a.storage.kind != b.storage.kind or a.storage.kind == "const":
        return False
    a0, b0 = a.storage.offset, b.storage.offset
    return a0 < b0 + b.storage.nbytes and b0 < a0 + a.storage.nbytes
