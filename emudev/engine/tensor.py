"""Tensor descriptors of the ISA: their byte span, and numpy views of device memory.

A descriptor is (va, dims, byte strides, dtype); the span it covers is computed with
Python integers, so no overflow can hide an access outside the address space.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from emudev.engine.ops import DTYPES
from emudev.uapi import defs


class Span(NamedTuple):
    """The bytes a descriptor can touch: [va, va + length). A named tuple, not a frozen
    dataclass: engines make one per operand per packet, and it builds several times faster."""

    va: int
    length: int


# Slicing a ctypes array copies it in C; iterating it goes through Python once per element.
def dims_of(tensor: defs.drm_emudev_tensor) -> tuple[int, int, int, int]:
    return tuple(tensor.dims[:])  # type: ignore[return-value]


def strides_of(tensor: defs.drm_emudev_tensor) -> tuple[int, int, int, int]:
    return tuple(tensor.strides[:])  # type: ignore[return-value]


def itemsize(dtype: int) -> int:
    return np.dtype(DTYPES[dtype]).itemsize


def check(tensor: defs.drm_emudev_tensor, *, written: bool) -> str | None:
    """Why a descriptor is malformed, or None: EINVAL material."""
    if tensor.dtype not in DTYPES:
        return f"unknown dtype {tensor.dtype}"
    dims, strides, size = dims_of(tensor), strides_of(tensor), itemsize(tensor.dtype)
    for axis, (dim, stride) in enumerate(zip(dims, strides, strict=True)):
        if not 1 <= dim <= defs.DRM_EMUDEV_MAX_TENSOR_DIM:
            return f"dims[{axis}] = {dim} is outside 1..{defs.DRM_EMUDEV_MAX_TENSOR_DIM}"
        if stride % size:
            return f"strides[{axis}] = {stride} is not a multiple of the element size {size}"
        if written and stride == 0 and dim > 1:
            return f"strides[{axis}] is 0 on a written tensor"
    if tensor.dtype != defs.DRM_EMUDEV_DTYPE_INT8 and tensor.zero_point:
        return "zero_point is set on a tensor that is not int8"
    return None


def span(tensor: defs.drm_emudev_tensor) -> Span:
    """Bytes from the first element to the end of the last one."""
    last = 0
    for dim, stride in zip(tensor.dims[:], tensor.strides[:], strict=True):
        last += (dim - 1) * stride
    return Span(tensor.va, last + itemsize(tensor.dtype))


def view(buffer: memoryview, offset: int, tensor: defs.drm_emudev_tensor) -> np.ndarray:
    """The descriptor as a numpy array over BO memory, written in place."""
    return np.ndarray(dims_of(tensor), dtype=DTYPES[tensor.dtype], buffer=buffer, offset=offset,
                      strides=strides_of(tensor))
