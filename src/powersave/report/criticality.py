"""Plots and a short HTML page for the criticality experiment's results (docs/criticality.md).

Every plot takes ``ax=None``, draws on that axes (or on a new figure's) and returns it; no pyplot
state is touched. :func:`write_criticality_report` writes the PNGs and ``criticality.html``.
"""

from __future__ import annotations

import base64
import functools
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter

from powersave._atomic import write_bytes_atomic, write_text_atomic
from powersave.report.html import _png
from powersave.report.plots import ReportError, _new_axes

VARIANT_COLOURS = {"plain": "#555555", "sparse": "#1b9e77", "critical": "#d95f02"}
_MODE_MARKERS = {"full": "o", "balanced": "s", "saver": "^", "ultra": "v"}


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else _new_axes((6.0, 4.2))


def _runs(results: Mapping[str, Any], model: str) -> list[Mapping[str, Any]]:
    runs = results.get("runs") if isinstance(results, Mapping) else None
    if not isinstance(runs, list):
        raise ReportError("results has no 'runs' list; give the experiment's results.json dict")
    mine = [r for r in runs if r.get("model") == model]
    if not mine:
        raise ReportError(f"results has no run of model {model!r}")
    return mine


def _colour(variant: str) -> str:
    return VARIANT_COLOURS.get(variant, "#7570b3")


def plot_frontier(results: Mapping[str, Any], model: str, ax: Axes | None = None) -> Axes:
    """Accuracy against synaptic operations (share of dense MACs) per mode, one line per run.

    Dashed: the plain runs' mean dense accuracy and 0.5 pp below it; dotted: 10 % and 5 % of
    dense MACs (the issue's target and aim).
    """
    ax = _axes(ax)
    runs = _runs(results, model)
    plain = [r["dense_accuracy"] for r in runs if r["variant"] == "plain"]
    labelled: set[str] = set()
    for run in runs:
        modes = run["modes"]
        x = [m["synaptic_ops_per_sample"] / m["dense_macs_per_sample"] for m in modes]
        y = [100 * m["accuracy"] for m in modes]
        colour = _colour(run["variant"])
        label = run["variant"] if run["variant"] not in labelled else None
        labelled.add(run["variant"])
        ax.plot(x, y, "-", color=colour, alpha=0.6, lw=1, label=label)
        for xi, yi, m in zip(x, y, modes, strict=True):
            ax.plot(xi, yi, _MODE_MARKERS.get(m["name"], "."), color=colour, ms=4)
    if plain:
        ref = 100 * float(np.mean(plain))
        ax.axhline(ref, ls="--", color="#222", lw=0.8, label="plain dense (mean)")
        ax.axhline(ref - 0.5, ls="--", color="#999", lw=0.8, label="−0.5 pp")
    for share in (0.10, 0.05):
        ax.axvline(share, ls=":", color="#999", lw=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide over a short decade
    ax.set_xlabel("synaptic operations / dense MACs (test split)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{model}: accuracy–operations frontier (modes ○ full □ balanced △ saver ▽ ultra)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="best")
    return ax


def plot_chi(results: Mapping[str, Any], model: str, ax: Axes | None = None) -> Axes:
    """χ per layer (log scale), mean and min–max over seeds per variant; χ = 1 dashed."""
    ax = _axes(ax)
    runs = _runs(results, model)
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    layers = list(runs[0]["chi_layers"])
    width = 0.8 / max(len(variants), 1)
    for k, variant in enumerate(variants):
        chi = np.array([r["chi"] for r in runs if r["variant"] == variant], dtype=float)
        centre = chi.mean(axis=0)
        x = np.arange(len(layers)) + (k - (len(variants) - 1) / 2) * width
        err = np.vstack([centre - chi.min(axis=0), chi.max(axis=0) - centre])
        ax.bar(x, centre, width, color=_colour(variant), label=variant, alpha=0.85)
        ax.errorbar(x, centre, yerr=err, fmt="none", ecolor="#222", lw=0.8, capsize=2)
    ax.axhline(1.0, ls="--", color="#222", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(layers)), layers, fontsize=8)
    ax.set_ylabel("χ (mean squared singular value of J)")
    ax.set_title(f"{model}: layer gains χ (bars: mean over seeds, whiskers: min–max)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    return ax


def plot_avalanches(results: Mapping[str, Any], model: str, ax: Axes | None = None) -> Axes:
    """Complementary CDF of damage-spreading avalanche sizes per variant (seeds pooled), log–log.

    The legend gives each variant's fitted exponent α (mean over seeds).
    """
    ax = _axes(ax)
    runs = _runs(results, model)
    for variant in dict.fromkeys(r["variant"] for r in runs):
        counts: dict[int, int] = {}
        alphas = []
        for r in runs:
            if r["variant"] != variant:
                continue
            hist = r["avalanches"]["histogram"]
            for s, c in zip(hist["size"], hist["count"], strict=True):
                counts[int(s)] = counts.get(int(s), 0) + int(c)
            if r.get("avalanche_exponent") is not None:
                alphas.append(float(r["avalanche_exponent"]))
        sizes = np.array(sorted(s for s in counts if s > 0))
        if sizes.size == 0:
            continue
        n = np.array([counts[s] for s in sizes], dtype=float)
        ccdf = n[::-1].cumsum()[::-1] / n.sum()
        alpha = f", α ≈ {np.mean(alphas):.2f}" if alphas else ""
        ax.step(sizes, ccdf, where="post", color=_colour(variant), label=f"{variant}{alpha}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("avalanche size (hidden spikes changed by deleting one input spike)")
    ax.set_ylabel("P(size ≥ s)")
    ax.set_title(f"{model}: damage spreading")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    return ax


def _summary_table(results: Mapping[str, Any]) -> str:
    keys = (
        ("dense_accuracy", "dense acc (%)", 100),
        ("balanced_accuracy", "balanced acc (%)", 100),
        ("balanced_ops_share_of_dense", "balanced ops / dense (%)", 100),
        ("balanced_spikes_per_hidden_neuron", "spikes / hidden neuron", 1),
        ("chi_hidden_geomean", "χ hidden (geo. mean)", 1),
        ("branching_ratio_1", "σ hidden 1→2", 1),
        ("avalanche_exponent", "avalanche α", 1),
    )
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in keys)
    rows = []
    for row in results.get("summary", []):
        cells = []
        for key, _, scale in keys:
            s = row["metrics"].get(key)
            if not s or s["mean"] is None:
                cells.append("<td>—</td>")
            else:
                cells.append(f"<td>{s['mean'] * scale:.3g} ± {s['std'] * scale:.2g}</td>")
        rows.append(
            f"<tr><td>{html.escape(row['model'])}</td><td>{html.escape(row['variant'])}</td>"
            f"<td>{row['seeds']}</td>{''.join(cells)}</tr>"
        )
    return (
        f"<table><tr><th>model</th><th>variant</th><th>seeds</th>{head}</tr>{''.join(rows)}</table>"
    )


def render_criticality_html(
    results: Mapping[str, Any], figures: Sequence[tuple[str, bytes]]
) -> str:
    """The page: summary (mean ± sd over seeds), targets, findings, embedded plots."""
    targets = []
    for model, t in results.get("targets", {}).items():
        best = t.get("best")
        if not best:
            continue
        targets.append(
            f"<li><b>{html.escape(model)}</b>: {'met' if t['met'] else 'not met'} — "
            f"{'best' if t['met'] else 'closest'} "
            f"{html.escape(best['variant'])} (seed {best['seed']}): balanced accuracy "
            f"{100 * best['balanced_accuracy']:.2f} % against plain dense "
            f"{100 * t['plain_dense_accuracy']:.2f} %, synaptic operations "
            f"{100 * best['ops_share_of_dense']:.2f} % of dense MACs, "
            f"{best['spikes_per_hidden_neuron']:.3f} spikes per hidden neuron</li>"
        )
    found = "".join(f"<li>{html.escape(f['text'])}</li>" for f in results.get("findings", []))
    images = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(caption)}</figcaption>'
        "</figure>"
        for caption, png in figures
    )
    data = results.get("dataset", {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>powersave: criticality"
        "</title><style>body{font-family:sans-serif;max-width:72rem;margin:2rem auto;"
        "padding:0 1rem}table{border-collapse:collapse;font-size:.85rem}td,th{border-bottom:"
        "1px solid #ddd;padding:.25rem .5rem;text-align:right}figure{display:inline-block;"
        "width:48%;margin:0}img{width:100%}</style></head><body>"
        "<h1>Criticality experiment</h1>"
        f"<p>{html.escape(str(data.get('name', '')))}: train {data.get('train')}, calibration "
        f"{data.get('calibration')}, test {data.get('test')}. Figures on the test split; "
        "modes calibrated on the calibration split. Mean ± sample standard deviation over "
        "seeds.</p>"
        f"<h2>Summary</h2>{_summary_table(results)}"
        f"<h2>Targets (issue 5)</h2><ul>{''.join(targets)}</ul>"
        "<h2>What the data shows</h2><p>A difference is called clear when it exceeds twice "
        "its standard error over seeds (Welch); with a few seeds this is a rough test.</p>"
        f"<ul>{found}</ul><h2>Plots</h2>{images}</body></html>\n"
    )


def write_criticality_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<model>_frontier.png``, ``<model>_chi.png``, ``<model>_avalanches.png`` and
    ``criticality.html`` into ``out_dir``; returns file name → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    figures: list[tuple[str, bytes]] = []
    models = list(dict.fromkeys(r["model"] for r in results.get("runs", [])))
    plots = (
        ("frontier", plot_frontier, "accuracy against operations"),
        ("chi", plot_chi, "layer gains χ"),
        ("avalanches", plot_avalanches, "avalanche sizes"),
    )
    for model in models:
        for suffix, plot, caption in plots:
            png = _png(functools.partial(plot, results, model))
            path = out / f"{model}_{suffix}.png"
            write_bytes_atomic(path, png)
            written[path.name] = path
            figures.append((f"{model}: {caption}", png))
    page = out / "criticality.html"
    write_text_atomic(page, render_criticality_html(results, figures))
    written[page.name] = page
    return written
