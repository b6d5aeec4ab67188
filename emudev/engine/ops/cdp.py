"""CDP engine: LRN (as ONNX) and softmax along C of NHWC tensors, floating point only, computed in fp32."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import FLOAT_DTYPES, check_tensor, first_error

CDP_LRN, CDP_SOFTMAX = 0, 1
_LRN_TAP_LOOP = 32  # windows wider than this use prefix sums (fp64) instead of one pass per tap


def check_cdp(op: int, src_dims: Sequence[int], dst_dims: Sequence[int], src_dtype: int, dst_dtype: int,
              size: int) -> str | None:
    """Submit-time rules of CDP; None if fine, else the reason."""
    if op not in (CDP_LRN, CDP_SOFTMAX):
        return f"unknown CDP op {op}"
    err = first_error(check_tensor("src", src_dims, src_dtype), check_tensor("dst", dst_dims, dst_dtype))
    if err:
        return err
    if src_dtype not in FLOAT_DTYPES or dst_dtype not in FLOAT_DTYPES:
        return "CDP takes fp32/fp16 only"
    if tuple(src_dims) != tuple(dst_dims):
        return f"src dims {tuple(src_dims)} != dst dims {tuple(dst_dims)}"
    if op == CDP_LRN and (size < 1 or size % 2 == 0):
        return f"LRN size {size} is not a positive odd number"
    if op == CDP_SOFTMAX and size != 0:
        return "SOFTMAX takes size 0"
    return None


def lrn(src: np.ndarray, dst: np.ndarray, *, size: int, alpha: float, beta: float, bias: float) -> None:
    """ONNX LRN along the last dim: x / (bias + alpha / size * sum of x^2 over the window)^beta.

    The window spans floor((size-1)/2) channels before and ceil((size-1)/2) after, clipped to [0, C).
    """
    if src.shape != dst.shape:
        raise ValueError(f"src shape {src.shape} != dst shape {dst.shape}")
    if size < 1:
        raise ValueError("LRN size must be positive")
    c = src.shape[-1]
    before = min((size - 1) // 2, c - 1)
    after = min(size - 1 - (size - 1) // 2, c - 1)
    sq = np.square(src, dtype=np.float32)
    if before + after + 1 <= _LRN_TAP_LOOP:
        sums, scale = _window_sums(sq, before, after)
    else:
        cs = np.zeros((*sq.shape[:-1], c + 1), np.float64)
        np.cumsum(sq, axis=-1, dtype=np.float64, out=cs[..., 1:])
        idx = np.arange(c)
        sums = (cs[..., np.minimum(idx + after + 1, c)] - cs[..., np.maximum(idx - before, 0)]).astype(np.float32)
        scale = sums
    sums *= np.float32(alpha / size)
    sums += np.float32(bias)
    _inverse_power(sums, beta)
    np.multiply(src, scale, out=dst, dtype=np.float32, casting="unsafe")  # element for element: dst may be src


def _window_sums(sq: np.ndarray, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of each channel's window along the last dim, as (a flat array holding the sums among a few
    spare entries, a view of the sums in sq's shape). The channels are laid out with `before` zeros
    ahead and `after` behind in one flat array, so that every tap is one contiguous add over all
    pixels at once, where a slice of the last dim would be a short strided add per pixel; the work
    after the sum runs over the flat array for the same reason."""
    *lead, c = sq.shape
    rows, width = int(np.prod(lead)), c + before + after
    padded = np.zeros((rows, width), np.float32)
    padded[:, before:before + c] = sq.reshape(rows, c)
    flat = padded.reshape(-1)
    total = np.empty(rows * width, np.float32)
    # total[i] sums flat[i : i + before + after + 1], the window of the channel at flat[i + before]
    n = rows * width - before - after
    window = total[:n]
    np.copyto(window, flat[:n])
    for tap in range(1, before + after + 1):
        window += flat[tap:tap + n]
    total[n:] = 1.0  # spare entries past the last window: any positive value
    return total, total.reshape(rows, width)[:, :c].reshape(sq.shape)


def _inverse_power(x: np.ndarray, beta: float) -> None:
    """x = x ** -beta in place; the betas LRNs use (0.75 in AlexNet and Inception) through square roots,
    vector instructions where numpy's fp32 power is a scalar loop."""
    if beta == 0.75:
        root = np.sqrt(x)
        np.multiply(root, np.sqrt(root), out=x)
    elif beta == 0.5:
        np.sqrt(x, out=x)
    elif beta != 1.0:
        np.power(x, np.float32(beta), out=x)
    np.reciprocal(x, out=x)


def softmax(src: np.ndarray, dst: np.ndarray) -> None:
    """Softmax along the last dim (C), with the maximum subtracted first so exp never overflows."""
    if src.shape != dst.shape:
        raise ValueError(f"src shape {src.shape} != dst shape {dst.shape}")
    if dst.dtype == np.float32:
        work = dst
        np.copyto(work, src, casting="unsafe")  # numpy copies through a buffer if src overlaps dst
    else:
        work = src.astype(np.float32)
    work -= work.max(axis=-1, keepdims=True)
    np.exp(work, out=work)
    work /= work.sum(axis=-1, keepdims=True)
    if work is not dst:
        dst[...] = work
