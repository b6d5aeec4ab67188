"""RUBIK engine: transpose by a permutation of the dims, and reshape (row-major element order)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import check_tensor, first_error

RUBIK_TRANSPOSE, RUBIK_RESHAPE = 0, 1


def check_rubik(op: int, src_dims: Sequence[int], dst_dims: Sequence[int], src_dtype: int, dst_dtype: int,
                perm: Sequence[int] | None) -> str | None:
    """Submit-time rules of RUBIK; perm is None or all zero for RESHAPE. None if fine, else the reason."""
    if op not in (RUBIK_TRANSPOSE, RUBIK_RESHAPE):
        return f"unknown RUBIK op {op}"
    err = first_error(check_tensor("src", src_dims, src_dtype), check_tensor("dst", dst_dims, dst_dtype))
    if err:
        return err
    if src_dtype != dst_dtype:
        return "src and dst dtypes differ"
    if op == RUBIK_RESHAPE:
        if perm is not None and any(perm):
            return "RESHAPE takes an all-zero perm"
        if int(np.prod(src_dims, dtype=np.int64)) != int(np.prod(dst_dims, dtype=np.int64)):
            return "element counts differ"
        return None
    if perm is None or sorted(perm) != list(range(len(src_dims))):
        return f"perm {perm} is not a permutation of 0..{len(src_dims) - 1}"
    want = tuple(src_dims[p] for p in perm)
    if tuple(dst_dims) != want:
        return f"dst dims {tuple(dst_dims)} != {want}"
    return None


def transpose(src: np.ndarray, dst: np.ndarray, perm: Sequence[int]) -> None:
    """dst[i0, i1, i2, i3] = src at the index permuted by perm (dst.shape[i] == src.shape[perm[i]])."""
    view = np.transpose(src, tuple(int(p) for p in perm))
    if view.shape != dst.shape:
        raise ValueError(f"dst shape {dst.shape} != {view.shape}")
    dst[...] = view  # numpy buffers the copy when src and dst overlap


def reshape(src: np.ndarray, dst: np.ndarray) -> None:
    """Copy src into dst element by element in row-major order (same count; either may be non-contiguous)."""
    if src.size != dst.size:
        raise ValueError(f"element counts differ: {src.size} != {dst.size}")
    if src.dtype != dst.dtype:
        raise ValueError("src and dst dtypes differ")
    # Prefer a view of dst shaped like src (no temporary); else a view of src shaped like dst; else numpy copies.
    target = dst.view()
    try:
        target.shape = src.shape
    except AttributeError:
        dst[...] = src.reshape(dst.shape)
        return
    target[...] = src
