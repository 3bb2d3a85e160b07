"""Plain numpy kernels on batches, shared by the dense pass and the event engine.

Shapes: images are ``(N, C, H, W)``, flat populations ``(N, F)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from powersave.graph.nodes import AvgPool, Conv, Dense, MaxPool


def conv2d(a: np.ndarray, node: Conv) -> np.ndarray:
    """``(N, C, H, W)`` → ``(N, O, Ho, Wo)``: cross-correlation plus bias, as torch's conv2d.

    im2col: one strided copy per kernel tap into ``(C·kh·kw, N·Ho·Wo)``, then a single matrix
    product, so BLAS does the arithmetic in one large call.
    """
    n, c, h, w = a.shape
    kh, kw = node.kernel
    sh, sw = node.stride
    ph, pw = node.padding
    if ph or pw:
        a = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    channels_first = a.transpose(1, 0, 2, 3)  # (C, N, H, W)
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=a.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, ky, kx] = channels_first[:, :, ky : ky + sh * ho : sh, kx : kx + sw * wo : sw]
    weight = node.weight.reshape(node.weight.shape[0], -1).astype(a.dtype, copy=False)
    out = weight @ cols.reshape(c * kh * kw, n * ho * wo)  # (O, N·Ho·Wo)
    out = out.reshape(-1, n, ho, wo).transpose(1, 0, 2, 3)  # (N, O, Ho, Wo)
    return np.ascontiguousarray(out + node.bias.astype(a.dtype)[None, :, None, None])


def pool_taps(x: np.ndarray, node: AvgPool | MaxPool, fill: float) -> Iterator[np.ndarray]:
    """The pooling windows of ``x`` ``(N, C, H, W)`` tap by tap: for each kernel tap (row-major)
    the strided view ``(N, C, Ho, Wo)`` of what it sees in every window, padding ``fill``."""
    h, w = x.shape[2:]
    kh, kw = node.kernel
    sh, sw = node.stride  # type: ignore[misc]
    ph, pw = node.padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for ky in range(kh):
        for kx in range(kw):
            yield x[:, :, ky : ky + sh * ho : sh, kx : kx + sw * wo : sw]


def _pool(x: np.ndarray, node: AvgPool | MaxPool, reduce: np.ufunc, fill: float) -> np.ndarray:
    """Reduce each pooling window with ``reduce`` (np.add, np.maximum, np.minimum).

    One strided slice per kernel tap, combined elementwise: far faster than reducing a
    sliding-window view, and it works for any kernel, stride and padding.
    """
    taps = pool_taps(x, node, fill)
    out = next(taps).copy()
    for tap in taps:
        reduce(out, tap, out=out)
    return out


def avgpool2d(a: np.ndarray, node: AvgPool) -> np.ndarray:
    """Average over each window, padding counted as zeros (torch's count_include_pad=True)."""
    return _pool(a, node, np.add, 0.0) / np.float32(node.kernel[0] * node.kernel[1])


def maxpool2d(a: np.ndarray, node: MaxPool) -> np.ndarray:
    """Max over each window of non-negative activations."""
    return _pool(a, node, np.maximum, -np.inf)


def minpool2d(times: np.ndarray, node: MaxPool) -> np.ndarray:
    """Max pooling in the time code: the first spike of each window wins (padding never fires)."""
    return _pool(times, node, np.minimum, np.inf)


def dense(a: np.ndarray, node: Dense) -> np.ndarray:
    """``(N, F_in)`` → ``(N, F_out)``: ``a @ weight.T + bias``."""
    return a @ node.weight.T.astype(a.dtype, copy=False) + node.bias.astype(a.dtype, copy=False)


def synaptic(a: np.ndarray, node: Dense | Conv | AvgPool) -> np.ndarray:
    """Potential (pre-activation) of a synaptic node for input activations ``a``."""
    if isinstance(node, Dense):
        return dense(a, node)
    if isinstance(node, Conv):
        return conv2d(a, node)
    return avgpool2d(a, node)
