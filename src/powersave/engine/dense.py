"""The ReLU network a graph came from, run densely in numpy (no clipping, no spikes).

It gives the answers the time code must reproduce, the activations that calibrate the scales
``A_ℓ``, and the zero-skipping baseline (non-zero activations times their fan-out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powersave.coding import split_on_off
from powersave.engine import ops
from powersave.graph.graph import Graph
from powersave.graph.nodes import SYNAPTIC_TYPES, Flatten, MaxPool


@dataclass(frozen=True)
class DensePass:
    """Result of :func:`forward` on a batch.

    Attributes:
        activations: one array per spiking population (``graph.populations`` order), each
            ``(N, *population.shape)``: the input after the ON/OFF split, then each hidden layer's
            ReLU output (before any max pool).
        layer_inputs: one array per synaptic node, what it receives ``(N, *input_shape)``.
        logits: ``(N, classes)``.
    """

    activations: tuple[np.ndarray, ...]
    layer_inputs: tuple[np.ndarray, ...]
    logits: np.ndarray


def forward(graph: Graph, x: np.ndarray) -> DensePass:
    """Run the ReLU network of ``graph`` on a checked batch ``x`` ``(N, *input.shape)``."""
    a = split_on_off(np.asarray(x, dtype=np.float32), graph.input.signed)
    activations = [a]
    layer_inputs = []
    readout = graph.readout_index
    for i, node in enumerate(graph.nodes[1:], start=1):
        if isinstance(node, Flatten):
            a = a.reshape(a.shape[0], -1)
        elif isinstance(node, MaxPool):
            a = ops.maxpool2d(a, node)
        elif isinstance(node, SYNAPTIC_TYPES):
            layer_inputs.append(a)
            a = ops.synaptic(a, node)
            if i != readout:
                a = np.maximum(a, 0)
                activations.append(a)
    logits = a.reshape(a.shape[0], -1)
    return DensePass(tuple(activations), tuple(layer_inputs), logits)
