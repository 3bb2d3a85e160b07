"""Plots of a results dict (the demo's ``results.json``): each draws on an axes and returns it.

Every function takes ``ax=None``: given an axes it draws there; without one it makes a new
:class:`matplotlib.figure.Figure` (no pyplot, no global state, no GUI backend) and draws on its
only axes, whose figure is ``ax.figure``. Accuracies in the results are fractions (0-1) and are
shown in %; energies are estimates in pJ per sample from a named profile and always labelled so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from powersave.errors import PowersaveError

__all__ = [
    "ReportError",
    "plot_accuracy_energy",
    "plot_raster",
    "plot_spikes_per_layer",
]

# One colour per mode, in order of appearance; baselines are grey and black.
_MODE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
_DENSE_COLOUR = "#222222"
_ZERO_SKIP_COLOUR = "#888888"


class ReportError(PowersaveError, ValueError):
    """A results dict lacks something a plot or the report needs."""


def _new_axes(figsize: tuple[float, float]) -> Axes:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ReportError(
            f"{where} has no {key!r}; give results in the schema the demo writes "
            "(see powersave.report.write_report)"
        )
    return d[key]


def mode_colour(index: int) -> str:
    """The colour of the ``index``-th mode, shared by all plots."""
    return _MODE_COLOURS[index % len(_MODE_COLOURS)]


def _energy(entry: Mapping[str, Any], profile: str, where: str) -> float:
    energies = _need(entry, "energy_pj_per_sample", where)
    if profile not in energies:
        raise ReportError(
            f"{where} has no energy estimate for profile {profile!r} "
            f"(it has {sorted(energies)}); pass one of those"
        )
    return float(energies[profile])


def _ops_formatter(value: float, _pos: int | None = None) -> str:
    """200000 -> '200k', 3e6 -> '3M' (SI prefixes on a plain count)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _log_ticks(ax: Axes, low: float, high: float) -> None:
    """Short labels (200k, 1M) on a log x axis: 1-2-5 ticks over narrow ranges, decades else."""
    decades = np.log10(max(high, 1e-300) / max(low, 1e-300)) if low > 0 else 10.0
    subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(_ops_formatter))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(float(k) for k in range(1, 10))))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_accuracy_energy(
    model: Mapping[str, Any], profile: str | None, ax: Axes | None = None
) -> Axes:
    """Test accuracy against estimated energy per sample: baselines, modes and the cut-off sweep.

    Args:
        model: one entry of ``results["models"]``.
        profile: the energy profile whose estimates give the x axis (pJ per sample, log scale);
            ``None`` plots synaptic operations per sample instead (dense MACs for the dense
            baseline, non-zero activations times fan-out for zero-skipping).
        ax: the axes to draw on; a new figure's axes if ``None``.

    Returns:
        the axes drawn on.
    """
    if ax is None:
        ax = _new_axes((7.0, 4.6))
    name = str(model.get("name", "model"))
    baselines = _need(model, "baselines", f"model {name!r}")
    dense = _need(baselines, "dense", f"model {name!r} baselines")
    zero_skip = _need(baselines, "zero_skip", f"model {name!r} baselines")
    modes = list(model.get("modes", []))

    def x_of(entry: Mapping[str, Any], ops_key: str, where: str) -> float:
        if profile is None:
            return float(_need(entry, ops_key, where))
        return _energy(entry, profile, where)

    accuracies = []
    x_dense = x_of(dense, "dense_macs_per_sample", f"model {name!r} dense baseline")
    y_dense = 100 * float(_need(dense, "accuracy", f"model {name!r} dense baseline"))
    x_zero = x_of(zero_skip, "zero_skip_ops_per_sample", f"model {name!r} zero-skip baseline")
    y_zero = 100 * float(_need(zero_skip, "accuracy", f"model {name!r} zero-skip baseline"))
    accuracies += [y_dense, y_zero]

    sweep = model.get("sweep") or []
    if sweep:
        points = sorted(
            (
                x_of(p, "synaptic_ops_per_sample", f"model {name!r} sweep point"),
                100 * float(p["accuracy"]),
            )
            for p in sweep
        )
        sx, sy = zip(*points, strict=True)
        ax.plot(
            sx,
            sy,
            "-",
            color="#4a7ab5",
            lw=1.0,
            alpha=0.8,
            marker=".",
            ms=3,
            zorder=1,
            label="cut-off sweep (frontier)",
        )

    ax.scatter([x_dense], [y_dense], marker="s", s=55, color=_DENSE_COLOUR, zorder=3)
    ax.scatter([x_zero], [y_zero], marker="D", s=45, color=_ZERO_SKIP_COLOUR, zorder=3)
    labelled = [(x_dense, y_dense, "dense", _DENSE_COLOUR), (x_zero, y_zero, "zero-skip", "#555")]
    for i, mode in enumerate(modes):
        where = f"model {name!r} mode {mode.get('name')!r}"
        x = x_of(mode, "synaptic_ops_per_sample", where)
        y = 100 * float(_need(mode, "accuracy", where))
        accuracies.append(y)
        colour = mode_colour(i)
        ax.scatter([x], [y], marker="o", s=50, color=colour, edgecolor="white", lw=0.8, zorder=4)
        labelled.append((x, y, str(mode.get("name", f"mode {i}")), colour))
    ax.set_xscale("log")
    xs = [p[0] for p in labelled]
    _log_ticks(ax, min(xs), max(xs))
    if profile is None:
        ax.set_xlabel("synaptic operations per sample (dense: MACs)")
    else:
        ax.set_xlabel(f"estimated energy per sample (pJ, {profile})")
    ax.set_ylabel("test accuracy (%)")
    # The sweep can run down to chance; keep the modes readable and let the sweep leave the frame.
    low, high = min(accuracies), max(accuracies)
    span = max(high - low, 1.0)
    ax.set_ylim(max(0.0, low - 0.6 * span), min(100.0, high + 0.35 * span) + 0.05 * span)
    ax.grid(True, which="major", color="#dddddd", lw=0.6)
    ax.grid(True, which="minor", axis="x", color="#eeeeee", lw=0.4)
    ax.set_axisbelow(True)
    handles = [
        Line2D([], [], ls="", marker="s", color=_DENSE_COLOUR, label="dense ReLU (every MAC)"),
        Line2D([], [], ls="", marker="D", color=_ZERO_SKIP_COLOUR, label="zero-skipping ReLU"),
        Line2D([], [], ls="", marker="o", color=mode_colour(0), label="spiking modes"),
    ]
    if sweep:
        handles.append(
            Line2D([], [], color="#4a7ab5", lw=1.0, marker=".", ms=3, label="cut-off sweep")
        )
    ax.legend(handles=handles, loc="lower right", fontsize="small", frameon=True)
    what = "estimated energy" if profile is not None else "operations"
    ax.set_title(f"{name}: accuracy vs {what}", fontsize="medium")
    _label_points(ax, labelled)
    return ax


# Where a point's name may go, in points from the point: (dx, dy, ha, va), nearest first.
_LABEL_SPOTS = (
    (0, 7, "center", "bottom"),
    (0, -8, "center", "top"),
    (8, 0, "left", "center"),
    (-8, 0, "right", "center"),
    (6, 6, "left", "bottom"),
    (-6, 6, "right", "bottom"),
    (6, -6, "left", "top"),
    (-6, -6, "right", "top"),
    (0, 20, "center", "bottom"),
    (0, -22, "center", "top"),
    (18, 16, "left", "bottom"),
    (-18, 16, "right", "bottom"),
    (18, -18, "left", "top"),
    (-18, -18, "right", "top"),
    (0, 34, "center", "bottom"),
    (0, -36, "center", "top"),
)


def _label_box(
    x: float, y: float, spot: tuple[int, int, str, str], width: float, height: float
) -> tuple[float, float, float, float]:
    dx, dy, ha, va = spot
    left = {"left": x + dx, "center": x + dx - width / 2, "right": x + dx - width}[ha]
    bottom = {"bottom": y + dy, "center": y + dy - height / 2, "top": y + dy - height}[va]
    return left, bottom, left + width, bottom + height


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_points(ax: Axes, points: Sequence[tuple[float, float, str, str]]) -> None:
    """Name each point where the name overlaps neither another name nor a marker.

    Greedy: each name takes the nearest free spot of :data:`_LABEL_SPOTS`, with a thin leader line
    when it had to move away. Sizes are estimated in points from the font size (no renderer is
    needed), with some slack for the layout engine shrinking the axes later.
    """
    fontsize = 10.0 * 0.833  # "small" at matplotlib's default size
    scale = 72.0 / ax.figure.dpi
    ax.get_xlim()  # settle autoscaling so transData is final
    frame = ax.get_window_extent()
    frame_pts = (frame.x0 * scale, frame.y0 * scale, frame.x1 * scale, frame.y1 * scale)
    xy = [tuple(v * scale for v in ax.transData.transform((x, y))) for x, y, _, _ in points]
    markers = [(px - 5, py - 5, px + 5, py + 5) for px, py in xy]
    placed: list[tuple[float, float, float, float]] = []
    legend = ax.get_legend()
    if legend is not None:
        x0, y0, x1, y1 = (float(v) * scale for v in legend.get_window_extent().extents)
        placed.append((x0, y0, x1, y1))
    for i in sorted(range(len(points)), key=lambda k: xy[k][0]):
        x, y, text, colour = points[i]
        px, py = xy[i]
        width, height = 0.68 * fontsize * len(text) + 2, 1.25 * fontsize
        chosen = _LABEL_SPOTS[0]
        for spot in _LABEL_SPOTS:
            box = _label_box(px, py, spot, width, height)
            inside = (
                box[0] >= frame_pts[0]
                and box[2] <= frame_pts[2]
                and box[1] >= frame_pts[1]
                and box[3] <= frame_pts[3]
            )
            clash = any(_overlaps(box, other) for other in placed) or any(
                _overlaps(box, m) for j, m in enumerate(markers) if j != i
            )
            if inside and not clash:
                chosen = spot
                break
        placed.append(_label_box(px, py, chosen, width, height))
        dx, dy, ha, va = chosen
        far = abs(dx) + abs(dy) > 16
        ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize="small",
            color=colour,
            fontweight="bold",
            zorder=5,
            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkB": 4}
            if far
            else None,
        )


def plot_spikes_per_layer(model: Mapping[str, Any], ax: Axes | None = None) -> Axes:
    """Spikes per neuron per sample in each population: one group per population, one bar per mode.

    Args:
        model: one entry of ``results["models"]``; each mode needs ``populations``.
        ax: the axes to draw on; a new figure's axes if ``None``.

    Returns:
        the axes drawn on.
    """
    if ax is None:
        ax = _new_axes((7.0, 4.0))
    name = str(model.get("name", "model"))
    modes = [m for m in model.get("modes", []) if m.get("populations")]
    if not modes:
        raise ReportError(
            f"model {name!r} has no mode with 'populations'; the demo writes them per mode"
        )
    populations: list[str] = []
    for mode in modes:
        for p in mode["populations"]:
            if str(p["name"]) not in populations:
                populations.append(str(p["name"]))
    n_groups, n_bars = len(populations), len(modes)
    width = 0.8 / n_bars
    centres = np.arange(n_groups, dtype=float)
    top = 0.0
    for i, mode in enumerate(modes):
        values = {str(p["name"]): float(p["spikes_per_neuron"]) for p in mode["populations"]}
        heights = np.array([values.get(p, np.nan) for p in populations])
        top = max(top, float(np.nanmax(heights)) if np.isfinite(heights).any() else 0.0)
        xs = centres - 0.4 + width * (i + 0.5)
        ax.bar(
            xs,
            np.nan_to_num(heights),
            width=width * 0.92,
            color=mode_colour(list(model.get("modes", [])).index(mode)),
            label=str(mode.get("name", f"mode {i}")),
        )
        if n_bars * n_groups <= 32:
            for x, h in zip(xs, heights, strict=True):
                if np.isfinite(h):
                    ax.annotate(
                        f"{h:.2f}",
                        (x, h),
                        xytext=(0, 2),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize="x-small",
                        rotation=90 if n_bars > 3 else 0,
                    )
    neurons: dict[str, Any] = {}
    for mode in modes:
        for p in mode["populations"]:
            neurons.setdefault(str(p["name"]), p.get("neurons"))
    ax.set_xticks(
        centres,
        [f"{p}\n({neurons[p]} neurons)" if neurons.get(p) else p for p in populations],
    )
    ax.set_ylabel("spikes per neuron per sample")
    ax.set_ylim(0, max(top, 1e-3) * (1.35 if n_bars > 3 else 1.2))
    ax.grid(True, axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.legend(title="mode", fontsize="small", title_fontsize="small", ncols=min(n_bars, 4))
    ax.set_title(f"{name}: spikes per neuron in each population", fontsize="medium")
    return ax


def plot_raster(raster: Mapping[str, Any], ax: Axes | None = None) -> Axes:
    """Spike raster of one input: time on x (one window per layer), neurons stacked on y.

    Neuron ``i`` of population ``p`` is drawn at ``y = offset_p + i``, populations stacked from the
    input up in the order given. A spike at time ``t`` in window ``ℓ`` (``ℓ ≤ t < ℓ+1``, τ = 1)
    codes intensity ``a/A_ℓ = 1 − (t − ℓ)``: earlier is stronger, drawn darker and larger.
    Times may be absolute or relative to their window (all within ``[0, 1]``).

    Args:
        raster: ``{"sample", "label", "prediction", "mode", "populations": [{"name", "window",
            "neurons", "index", "time"}]}`` as the demo writes it.
        ax: the axes to draw on; a new figure's axes if ``None`` (with a colour bar).

    Returns:
        the axes drawn on.
    """
    own_figure = ax is None
    if ax is None:
        ax = _new_axes((8.0, 5.2))
    populations = list(_need(raster, "populations", "raster"))
    if not populations:
        raise ReportError("raster has no populations; nothing to draw")
    offset = 0
    xs, ys, intensities = [], [], []
    bands = []  # (name, window, low, high)
    windows = []
    for p in populations:
        where = f"raster population {p.get('name')!r}"
        window = int(_need(p, "window", where))
        neurons = int(_need(p, "neurons", where))
        index = np.asarray(_need(p, "index", where), dtype=float)
        time = np.asarray(_need(p, "time", where), dtype=float)
        if index.shape != time.shape:
            raise ReportError(
                f"{where}: 'index' has {index.size} entries but 'time' has {time.size}; "
                "give one time per spike"
            )
        if time.size and window > 0 and time.max() <= 1.0:
            time = time + window  # relative to the window: make absolute
        xs.append(time)
        ys.append(index + offset)
        intensities.append(np.clip(1.0 - (time - window), 0.0, 1.0))
        bands.append((str(p.get("name", "?")), window, offset, offset + neurons))
        windows.append(window)
        offset += neurons
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    strength = np.concatenate(intensities)
    # Strong spikes on top of weak ones.
    order = np.argsort(strength)
    size = 1.2 + 3.8 * strength[order] if offset > 400 else 3 + 12 * strength[order]
    points = ax.scatter(
        x[order],
        y[order],
        c=strength[order],
        s=size,
        cmap="viridis_r",
        vmin=0.0,
        vmax=1.0,
        marker="o",
        linewidths=0,
        rasterized=True,
    )
    first, last = min(windows), max(windows) + 1
    for boundary in range(first, last + 1):
        ax.axvline(boundary, color="#555555", lw=0.8, zorder=0)
    for _, _, low, _ in bands[1:]:
        ax.axhline(low - 0.5, color="#999999", lw=0.6, ls="--", zorder=0)
    # Window names as minor tick labels at window centres, under the numeric time ticks.
    ax.set_xlim(first - 0.02, last + 0.02)
    ax.set_xticks(range(first, last + 1))
    names_by_window: dict[int, list[str]] = {}
    for name, window, _, _ in bands:
        names_by_window.setdefault(window, []).append(name)
    centres = sorted(names_by_window)
    ax.set_xticks(
        [w + 0.5 for w in centres],
        [f"ℓ={w}: {', '.join(names_by_window[w])}" for w in centres],
        minor=True,
    )
    ax.tick_params(axis="x", which="minor", length=0, pad=16, labelsize="small")
    ax.set_xlabel("time (τ = 1; layer ℓ speaks in window [ℓ, ℓ+1))")
    ax.set_yticks(
        [(low + high - 1) / 2 for _, _, low, high in bands],
        [f"{name}\n({high - low})" for name, _, low, high in bands],
    )
    ax.tick_params(axis="y", length=0, labelsize="small")
    ax.set_ylim(-0.5, offset - 0.5)
    ax.set_ylabel("neuron (stacked by population)")
    label = raster.get("label", "?")
    prediction = raster.get("prediction", "?")
    mode = raster.get("mode")
    sample = raster.get("sample")
    title = "spike raster"
    if sample is not None:
        title += f" of test sample {sample}"
    title += f": label {label}, predicted {prediction}"
    if mode:
        title += f" ({mode} mode)"
    ax.set_title(title, fontsize="medium")
    if own_figure:
        bar = ax.figure.colorbar(points, ax=ax, pad=0.01, aspect=30)
        bar.set_label("intensity a/A (earlier spike = stronger)", fontsize="small")
        bar.ax.tick_params(labelsize="small")
    return ax
