"""powersave: a power-saving mode for neural networks.

Compile a ReLU network trained in PyTorch into a time-to-first-spike network, run it event by
event, and trade a bounded, measured accuracy loss for a measured saving of operations.

What ``import powersave`` offers does not depend on what is installed: PyTorch is imported only
when :func:`convert` (or training) is called, matplotlib only when a report is drawn.
"""

from powersave._version import __version__
from powersave.api import convert, load, save
from powersave.engine.stats import RunStats
from powersave.errors import (
    ConversionError,
    GraphError,
    InputError,
    NetworkFileError,
    PowersaveError,
)
from powersave.graph.graph import Graph
from powersave.network import InputRangeWarning, Network, Run
from powersave.plan import Plan

__all__ = [
    "ConversionError",
    "Graph",
    "GraphError",
    "InputError",
    "InputRangeWarning",
    "Network",
    "NetworkFileError",
    "Plan",
    "PowersaveError",
    "Run",
    "RunStats",
    "__version__",
    "convert",
    "load",
    "save",
]
