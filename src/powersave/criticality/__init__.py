"""Criticality diagnostics (DESIGN.md §4): layer gains χ, branching ratios, damage spreading.

Numpy only, like the inference path; fitting avalanche sizes imports the ``powerlaw`` package
when called. The training regulariser that holds χ near a target lives with the other training
options in :mod:`powersave.frontend.sparse` (it needs torch).
"""

from powersave.criticality.avalanches import (
    Avalanches,
    PowerLawFit,
    damage_spreading,
    fit_power_law,
)
from powersave.criticality.diagnostics import (
    LayerGain,
    branching_ratio,
    hidden_chi_geomean,
    layer_gains,
)
from powersave.criticality.summary import diagnose

__all__ = [
    "Avalanches",
    "LayerGain",
    "PowerLawFit",
    "branching_ratio",
    "damage_spreading",
    "diagnose",
    "fit_power_law",
    "hidden_chi_geomean",
    "layer_gains",
]
