"""BDMA engine: strided copy (concat/split are copies into/out of views) and fill."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import FLOAT_DTYPES, check_tensor, dtype_name, first_error

BDMA_COPY, BDMA_FILL = 0, 1


def check_bdma(op: int, src_dims: Sequence[int] | None, dst_dims: Sequence[int], src_dtype: int | None,
               dst_dtype: int) -> str | None:
    """Submit-time rules of BDMA (src_dims/src_dtype are None for FILL); None if fine, else the reason."""
    if op not in (BDMA_COPY, BDMA_FILL):
        return f"unknown BDMA op {op}"
    err = check_tensor("dst", dst_dims, dst_dtype)
    if err or op == BDMA_FILL:
        return err
    if src_dims is None or src_dtype is None:
        return "COPY needs a src"
    err = first_error(check_tensor("src", src_dims, src_dtype))
    if err:
        return err
    if tuple(src_dims) != tuple(dst_dims):
        return f"src dims {tuple(src_dims)} != dst dims {tuple(dst_dims)}"
    if src_dtype != dst_dtype and not (src_dtype in FLOAT_DTYPES and dst_dtype in FLOAT_DTYPES):
        return f"copy from {dtype_name(src_dtype)} to {dtype_name(dst_dtype)} (only fp32 <-> fp16 converts)"
    return None


def copy(src: np.ndarray, dst: np.ndarray) -> None:
    """dst = src for equal dims; fp32 <-> fp16 converts (round to nearest even), other dtypes must match."""
    if src.shape != dst.shape:
        raise ValueError(f"src shape {src.shape} != dst shape {dst.shape}")
    if src.dtype != dst.dtype and not (src.dtype.kind == "f" and dst.dtype.kind == "f"):
        raise ValueError(f"copy from {src.dtype} to {dst.dtype}")
    if src.dtype == dst.dtype and src.dtype.kind == "f":
        # Same-size unsigned views copy the bits exactly (NaN payloads included).
        u = _bits(dst.dtype)
        dst.view(u)[...] = src.view(u)
        return
    dst[...] = src  # numpy buffers the copy when src and dst overlap


def fill(dst: np.ndarray, bit_pattern: int) -> None:
    """Every element of dst = the low itemsize bytes of the u32 bit_pattern, reinterpreted as dst's dtype."""
    dst.view(_bits(dst.dtype))[...] = bit_pattern & ((1 << (8 * dst.itemsize)) - 1)


def _bits(dtype: np.dtype) -> np.dtype:
    """The unsigned integer dtype of the same size and byte order, to move raw bit patterns."""
    u = np.dtype(f"u{dtype.itemsize}")
    return u.newbyteorder(dtype.byteorder) if dtype.itemsize > 1 else u
