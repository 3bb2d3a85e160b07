"""The graph: named nodes in order, checked as a whole when built.

Edges are implied by the order (node ``k`` feeds node ``k + 1``): the converter accepts chains
only, and refuses residual additions, so a list is the honest representation for now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from powersave.errors import GraphError
from powersave.graph.nodes import (
    SYNAPTIC_TYPES,
    AvgPool,
    Conv,
    Dense,
    Flatten,
    Input,
    MaxPool,
    Node,
    Shape,
)


@dataclass(frozen=True)
class Population:
    """A spiking population: where spikes live, and the window they are sent in.

    Attributes:
        index: ℓ, the population's window is ``[ℓ, ℓ + 1)`` (τ = 1).
        source: name of the node that produces it (the input, a hidden synaptic layer).
        shape: per-sample shape after the source node (before any max pool or flatten).
        scale: ``A_ℓ``.
    """

    index: int
    source: str
    shape: Shape
    scale: float

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class Graph:
    """A time-to-first-spike network: an :class:`Input`, hidden layers and a readout.

    The readout is the last synaptic node (:class:`Dense` or :class:`Conv`, no scale); only
    :class:`Flatten` may follow it. Every other synaptic node is hidden and carries the scale of
    the population it produces.
    """

    nodes: tuple[Node, ...]
    shapes: tuple[Shape, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes)
        object.__setattr__(self, "nodes", nodes)
        if not nodes or not isinstance(nodes[0], Input):
            raise GraphError("a graph starts with exactly one Input node")
        names = [n.name for n in nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise GraphError(f"node names must be unique, repeated: {duplicates}")
        synaptic = [i for i, n in enumerate(nodes) if isinstance(n, SYNAPTIC_TYPES)]
        if not synaptic:
            raise GraphError("a graph needs at least one Dense or Conv layer (the readout)")
        readout_at = synaptic[-1]
        readout = nodes[readout_at]
        if not isinstance(readout, Dense | Conv):
            raise GraphError(
                f"the last synaptic node {readout.name!r} must be Dense or Conv (the readout), "
                f"got {type(readout).__name__}"
            )
        if readout.scale is not None:
            raise GraphError(f"readout {readout.name!r} produces potentials and takes no scale")
        for node in nodes[readout_at + 1 :]:
            if not isinstance(node, Flatten):
                raise GraphError(
                    f"only Flatten may follow the readout {readout.name!r}, got "
                    f"{type(node).__name__} {node.name!r}"
                )
        for i in synaptic[:-1]:
            if nodes[i].scale is None:  # type: ignore[union-attr]
                raise GraphError(f"hidden layer {nodes[i].name!r} needs a scale A > 0")
        for node in nodes[1:]:
            if isinstance(node, Input):
                raise GraphError(f"Input {node.name!r} may only be the first node")
        shapes: list[Shape] = [nodes[0].output_shape()]
        for node in nodes[1:]:
            shapes.append(node.output_shape(shapes[-1]))  # type: ignore[union-attr]
        object.__setattr__(self, "shapes", tuple(shapes))

    # -- structure -----------------------------------------------------------------------------

    @property
    def input(self) -> Input:
        return self.nodes[0]  # type: ignore[return-value]

    @property
    def readout_index(self) -> int:
        return max(i for i, n in enumerate(self.nodes) if isinstance(n, SYNAPTIC_TYPES))

    @property
    def readout(self) -> Dense | Conv:
        return self.nodes[self.readout_index]  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return int(np.prod(self.shapes[self.readout_index]))

    def input_shape_of(self, index: int) -> Shape:
        """Per-sample shape of what node ``index`` receives."""
        return self.shapes[index - 1]

    @property
    def populations(self) -> tuple[Population, ...]:
        """The spiking populations in window order: the input, then each hidden synaptic layer."""
        pops = [Population(0, self.input.name, self.shapes[0], self.input.scale)]
        for i, node in enumerate(self.nodes[: self.readout_index]):
            if isinstance(node, SYNAPTIC_TYPES):
                pops.append(Population(len(pops), node.name, self.shapes[i], node.scale))  # type: ignore[arg-type]
        return tuple(pops)

    @property
    def n_windows(self) -> int:
        """Number of windows; the readout's potential is read at time ``n_windows``."""
        return len(self.populations)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes are {[n.name for n in self.nodes]}")

    def with_scales(self, scales: dict[str, float]) -> Graph:
        """A copy with new scales, keyed by population source name (input included)."""
        from dataclasses import replace

        unknown = set(scales) - {p.source for p in self.populations}
        if unknown:
            raise GraphError(f"no spiking population named {sorted(unknown)}")
        return Graph(
            tuple(replace(n, scale=scales[n.name]) if n.name in scales else n for n in self.nodes)  # type: ignore[arg-type]
        )

    def summary(self) -> list[dict[str, Any]]:
        """One row per node: name, kind, output shape, parameters and scale."""
        rows = []
        for node, shape in zip(self.nodes, self.shapes, strict=True):
            params = sum(int(getattr(node, a).size) for a in ("weight", "bias") if hasattr(node, a))
            role = ""
            if isinstance(node, SYNAPTIC_TYPES):
                role = "readout" if node is self.readout else "hidden"
            rows.append(
                {
                    "name": node.name,
                    "kind": node.kind,
                    "role": role,
                    "output_shape": list(shape),
                    "parameters": params,
                    "scale": getattr(node, "scale", None),
                }
            )
        return rows


__all__ = ["AvgPool", "Conv", "Dense", "Flatten", "Graph", "Input", "MaxPool", "Population"]
