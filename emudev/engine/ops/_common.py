"""Helpers shared by the engine ops: dtype enum, shape rules for the checkers, chunking and aliasing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

FP32, FP16, INT8, INT32 = 0, 1, 2, 3
DTYPES: dict[int, type[np.generic]] = {FP32: np.float32, FP16: np.float16, INT8: np.int8, INT32: np.int32}
FLOAT_DTYPES = frozenset({FP32, FP16})
DTYPE_NAMES = {FP32: "fp32", FP16: "fp16", INT8: "int8", INT32: "int32"}
MAX_TENSOR_DIM = 65535

# Temporaries (im2col blocks, accumulators) are kept around this size so memory stays bounded whatever the shapes.
CHUNK_BYTES = 32 << 20

Index = tuple[slice, ...]


def dtype_name(dtype: int) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype))


def check_tensor(name: str, dims: Sequence[int], dtype: int) -> str | None:
    """Generic tensor rule: four dims in [1, MAX_TENSOR_DIM] and a known dtype."""
    if len(dims) != 4:
        return f"{name}: expected 4 dims, got {len(dims)}"
    for d in dims:
        if not 1 <= d <= MAX_TENSOR_DIM:
            return f"{name}: dim {d} out of range [1, {MAX_TENSOR_DIM}]"
    if dtype not in DTYPES:
        return f"{name}: unknown dtype {dtype}"
    return None


def check_pairs(name: str, values: Sequence[int], count: int, minimum: int) -> str | None:
    if len(values) != count:
        return f"{name}: expected {count} values, got {len(values)}"
    for v in values:
        if v < minimum:
            return f"{name}: {v} is below {minimum}"
    return None


def out_size(size: int, kernel: int, stride: int, dilation: int, pad_a: int, pad_b: int) -> int:
    """Output extent of a window sweep (CONV/PDP formula); <= 0 when no window fits."""
    span = size + pad_a + pad_b - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    return span // stride + 1


def first_error(*reasons: str | None) -> str | None:
    for r in reasons:
        if r is not None:
            return r
    return None


def detach(a: np.ndarray | None, dst: np.ndarray) -> np.ndarray | None:
    """A copy of `a` if it may overlap dst, so writing dst in pieces never changes an input still to be read."""
    if a is None or not np.may_share_memory(a, dst):
        return a
    return a.copy()


def same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """True if a and b address exactly the same elements in the same order (safe for element-wise in place)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def as_2d_view(a: np.ndarray) -> np.ndarray | None:
    """a as a (rows, last dim) view without copying, or None when its strides do not merge."""
    v = a.view()
    try:
        v.shape = (-1, a.shape[-1])
    except AttributeError:
        return None
    return v


def blasable(a: np.ndarray) -> bool:
    """Whether numpy's matmul can hand the inner matrices of `a` (row-major) to BLAS; else it uses a slow loop."""
    if a.ndim < 2:
        return False
    item = a.itemsize
    rs, cs = a.strides[-2], a.strides[-1]
    return (cs == item or a.shape[-1] == 1) and rs % item == 0 and rs >= a.shape[-1] * item


def blas_operand(a: np.ndarray) -> np.ndarray:
    """a itself if BLAS can read its inner matrices (row- or column-major), else a contiguous copy."""
    if a.ndim >= 2:
        item = a.itemsize
        rs, cs = a.strides[-2], a.strides[-1]
        rows, cols = a.shape[-2], a.shape[-1]
        if cs == item and rs % item == 0 and rs >= cols * item:
            return a
        if rs == item and cs % item == 0 and cs >= rows * item:
            return a
    return np.ascontiguousarray(a)


# Measured with numpy 2.4: maximum and minimum against a broadcast scalar skip their SIMD loop (about 3x
# slower than against an array), and a per-channel vector makes a ufunc loop over rows as short as the
# channel count (about 2x slower for add). So elementwise epilogues meet rows of their constant, up to this
# many elements long.
_ROW_ELEMENTS = 1 << 14


def unit_runs(x: np.ndarray) -> np.ndarray | None:
    """x as a view whose last axis merges as many trailing contiguous axes as fit in a row of
    _ROW_ELEMENTS, or None when x's last axis is not contiguous."""
    if x.ndim == 0 or (x.strides[-1] != x.itemsize and x.shape[-1] > 1):
        return None
    k, n = x.ndim - 1, x.shape[-1]
    while k > 0 and x.strides[k - 1] == x.strides[k] * x.shape[k] and n * x.shape[k - 1] <= _ROW_ELEMENTS:
        k -= 1
        n *= x.shape[k]
    v = x.view()
    try:
        v.shape = (*x.shape[:k], n)
    except AttributeError:  # numpy sees no copy-free view (axes of length one may mislead the walk above)
        return None
    return v


def apply_constant(ufunc: np.ufunc, x: np.ndarray, value: float | np.generic) -> None:
    """x = ufunc(x, value) in place, value taken in x's dtype, as fast as numpy goes."""
    runs = unit_runs(x)
    if runs is None:
        ufunc(x, x.dtype.type(value), out=x)
    else:
        ufunc(runs, np.full(runs.shape[-1], value, x.dtype), out=runs)


def apply_channels(ufunc: np.ufunc, x: np.ndarray, vector: np.ndarray) -> None:
    """x = ufunc(x, vector) in place, computed in x's dtype, vector along x's last axis (a per-channel bias or
    scale)."""
    runs = unit_runs(x) if vector.ndim == 1 and vector.shape[0] in (1, x.shape[-1]) else None
    if runs is None:
        ufunc(x, vector, out=x, dtype=x.dtype)
    else:
        ufunc(runs, np.tile(vector.astype(x.dtype, copy=False), runs.shape[-1] // vector.shape[-1]), out=runs)


def pixel_chunks(n: int, oh: int, ow: int, pixels: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Split an [n, oh, ow] output grid into boxes (n0, n1, r0, r1, c0, c1) of at most ~`pixels` outputs."""
    pixels = max(1, pixels)
    if pixels >= oh * ow:
        step = pixels // (oh * ow)
        for n0 in range(0, n, step):
            yield n0, min(n, n0 + step), 0, oh, 0, ow
    elif pixels >= ow:
        step = pixels // ow
        for n0 in range(n):
            for r0 in range(0, oh, step):
                yield n0, n0 + 1, r0, min(oh, r0 + step), 0, ow
    else:
        for n0 in range(n):
            for r0 in range(oh):
                for c0 in range(0, ow, pixels):
                    yield n0, n0 + 1, r0, r0 + 1, c0, min(ow, c0 + pixels)


def block_slices(shape: tuple[int, ...], elems: int) -> Iterator[Index]:
    """Slice tuples covering `shape` in blocks of about `elems` elements; the last axis is never split.

    Every index is a slice, so a block keeps the array's rank (per-channel vectors still broadcast).
    """
    nd = len(shape)
    if nd <= 1:
        yield tuple(slice(None) for _ in shape)
        return
    # First axis whose trailing block fits the budget; the last axis is always taken whole.
    axis, inner = nd - 2, shape[-1]
    trailing = [1] * nd
    for i in range(nd - 2, -1, -1):
        trailing[i] = trailing[i + 1] * shape[i + 1]
    for i in range(nd - 1):
        if trailing[i] <= elems:
            axis, inner = i, trailing[i]
            break
    step = max(1, elems // max(inner, 1))
    lead = shape[:axis]
    total = 1
    for d in lead:
        total *= d
    for flat in range(total):
        idx: list[slice] = []
        rem = flat
        for d in reversed(lead):
            idx.append(slice(rem % d, rem % d + 1))
            rem //= d
        idx.reverse()
        for s0 in range(0, shape[axis], step):
            yield (*idx, slice(s0, min(shape[axis], s0 + step)))
