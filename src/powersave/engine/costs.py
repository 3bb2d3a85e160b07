"""Static costs of a graph's synaptic nodes: fan-out of each input neuron, dense MACs.

A *synaptic operation* is one spike delivered through one non-zero weight (one accumulate, one
weight read). The fan-out of an input neuron is the number of non-zero weights leaving it, so the
synaptic operations of a layer are ``sum(fired * fanout)``. For a convolution the fan-out depends
on the position (borders see fewer windows) and on which kernel taps are non-zero.

Dense MACs are what a dense accelerator computes: ``out_features * in_features`` for a linear
layer, ``O * Ho * Wo * C * kh * kw`` for a convolution (padding taps included, zero weights
included), ``C * Ho * Wo * kh * kw`` for an average pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powersave.graph.nodes import AvgPool, Conv, Dense, Shape


@dataclass(frozen=True)
class SynapticCost:
    """Per-sample constants of one synaptic node.

    Attributes:
        fanout: ``input_shape`` array, non-zero weights leaving each input neuron.
        dense_macs: multiply-accumulates of one dense evaluation of the node.
        neurons: neurons the node computes (each is updated once per inference).
    """

    fanout: np.ndarray
    dense_macs: int
    neurons: int


def _conv_fanout(
    mask: np.ndarray,
    input_shape: Shape,
    out_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> np.ndarray:
    """Fan-out map ``(C, H, W)`` for a per-tap connection count ``mask`` of shape (C, kh, kw)."""
    c, h, w = input_shape
    kh, kw = mask.shape[1:]
    ho, wo = out_hw
    sh, sw = stride
    ph, pw = padding
    padded = np.zeros((c, h + 2 * ph, w + 2 * pw), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            padded[:, ky : ky + sh * ho : sh, kx : kx + sw * wo : sw] += mask[:, ky, kx][
                :, None, None
            ]
    return padded[:, ph : ph + h, pw : pw + w]


def synaptic_cost(
    node: Dense | Conv | AvgPool, input_shape: Shape, output_shape: Shape
) -> SynapticCost:
    """Fan-out map and dense MACs of ``node`` fed with a population of ``input_shape``."""
    neurons = int(np.prod(output_shape))
    if isinstance(node, Dense):
        fanout = np.count_nonzero(node.weight, axis=0).astype(np.int64)
        return SynapticCost(fanout, int(node.weight.size), neurons)
    out_hw = (int(output_shape[1]), int(output_shape[2]))
    if isinstance(node, Conv):
        mask = np.count_nonzero(node.weight, axis=0).astype(np.int64)  # (C, kh, kw)
        fanout = _conv_fanout(mask, input_shape, out_hw, node.stride, node.padding)
        c, kh, kw = node.weight.shape[1:]
        return SynapticCost(fanout, neurons * int(c * kh * kw), neurons)
    kh, kw = node.kernel
    mask = np.ones((input_shape[0], kh, kw), dtype=np.int64)
    stride = node.stride or node.kernel  # set to the kernel on construction when None
    fanout = _conv_fanout(mask, input_shape, out_hw, stride, node.padding)
    return SynapticCost(fanout, neurons * kh * kw, neurons)
