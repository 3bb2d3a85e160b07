"""The graph IR: frozen dataclasses of numpy arrays, validated on construction; save/load."""

from powersave.graph.graph import Graph, Population
from powersave.graph.nodes import NODE_TYPES, AvgPool, Conv, Dense, Flatten, Input, MaxPool

__all__ = [
    "NODE_TYPES",
    "AvgPool",
    "Conv",
    "Dense",
    "Flatten",
    "Graph",
    "Input",
    "MaxPool",
    "Population",
]
