"""Plain numpy kernels on batches, shared by the dense pass and the event engine.

Shapes: images are ``(N, C, H, W)``, flat populations ``(N, F)``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from powersave.graph.nodes import AvgPool, Conv, Dense, MaxPool


def _windows(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    fill: float,
) -> np.ndarray:
    """Sliding windows ``(N, C, Ho, Wo, kh, kw)`` of a padded batch (a view where possible)."""
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = sliding_window_view(x, kernel, axis=(2, 3))  # (N, C, H', W', kh, kw)
    return win[:, :, :: stride[0], :: stride[1]]


def conv2d(a: np.ndarray, node: Conv) -> np.ndarray:
    """``(N, C, H, W)`` → ``(N, O, Ho, Wo)``: cross-correlation plus bias, as torch's conv2d."""
    win = _windows(a, node.kernel, node.stride, node.padding, 0.0)
    out = np.tensordot(win, node.weight, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
    out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out + node.bias.astype(out.dtype)[None, :, None, None])


def avgpool2d(a: np.ndarray, node: AvgPool) -> np.ndarray:
    """Average over each window, padding counted as zeros (torch's count_include_pad=True)."""
    win = _windows(a, node.kernel, node.stride, node.padding, 0.0)
    return win.mean(axis=(4, 5))


def maxpool2d(a: np.ndarray, node: MaxPool) -> np.ndarray:
    """Max over each window of non-negative activations."""
    win = _windows(a, node.kernel, node.stride, node.padding, -np.inf)
    return win.max(axis=(4, 5))


def minpool2d(times: np.ndarray, node: MaxPool) -> np.ndarray:
    """Max pooling in the time code: the first spike of each window wins (padding never fires)."""
    win = _windows(times, node.kernel, node.stride, node.padding, np.inf)
    return win.min(axis=(4, 5))


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
