"""Plots and the HTML report: the only part of powersave that imports matplotlib.

Plots take ``ax=None``, draw on that axes (or on a new :class:`~matplotlib.figure.Figure`'s) and
return it; no pyplot state is touched. :func:`write_report` turns the demo's results dict into
PNGs and one self-contained ``report.html``.
"""

from powersave.report.html import render_html, write_report
from powersave.report.plots import (
    ReportError,
    plot_accuracy_energy,
    plot_raster,
    plot_spikes_per_layer,
)

__all__ = [
    "ReportError",
    "plot_accuracy_energy",
    "plot_raster",
    "plot_spikes_per_layer",
    "render_html",
    "write_report",
]
