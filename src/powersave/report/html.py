"""The report: PNG plots and one self-contained HTML page from a results dict.

The page has no external resources: the plots are embedded as base64 ``data:`` URIs and the style
sheet is inline, so it opens offline and can be mailed as one file. Every string taken from the
results is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from powersave._atomic import write_bytes_atomic, write_text_atomic
from powersave.report.plots import (
    ReportError,
    plot_accuracy_energy,
    plot_raster,
    plot_spikes_per_layer,
)

__all__ = ["render_html", "write_report"]

_DPI = 130

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       line-height: 1.5; color: #1d1d1f; background: #fff; max-width: 72rem; margin: 2rem auto;
       padding: 0 1.5rem; }
h1 { font-size: 1.9rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.4rem; margin-top: 2.5rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.5rem; }
p, li { max-width: 52rem; }
.meta { color: #555; font-size: 0.9rem; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.88em;
       background: #f4f4f6; padding: 0.05rem 0.25rem; border-radius: 3px; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; flex: 1 1 30rem; }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.8rem 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.3rem 0.6rem; text-align: right;
         vertical-align: bottom; }
th { background: #f7f7f9; font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
tr.baseline td { color: #555; font-style: italic; }
.note { font-size: 0.85rem; color: #555; }
"""


# ----------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: Any, kind: str) -> str:
    """Format a number for a table cell (already escaped); '—' when it is missing."""
    v = _num(value)
    if v is None:
        return "—" if value is None else _e(value)
    if kind == "pct":  # a fraction shown in %
        return f"{100 * v:.2f}"
    if kind == "share":  # already in %
        return f"{v:.1f}"
    if kind == "count":
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if kind == "ratio":
        return f"{v:.3f}×"
    if kind == "ms":
        return f"{1000 * v:#.3g}"
    return f"{v:.3g}"


def _ratio(a: Any, b: Any) -> float | None:
    a, b = _num(a), _num(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


# ----------------------------------------------------------------------------- figures


def _png(draw: Callable[[], Axes]) -> bytes:
    fig = cast(Figure, draw().figure)  # the plots make a Figure of their own when given no axes
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    fig.clear()  # a bare Figure is not tracked by pyplot: clearing it frees it all
    return buffer.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def _profile_names(results: Mapping[str, Any]) -> list[str]:
    names = [str(p["name"]) for p in results.get("profiles", []) if "name" in p]
    if names:
        return names
    found: list[str] = []
    for model in results.get("models", []):
        for mode in model.get("modes", []):
            for name in mode.get("energy_pj_per_sample", {}):
                if name not in found:
                    found.append(str(name))
    return found


def _model_figures(
    model: Mapping[str, Any], profiles: Sequence[str]
) -> list[tuple[str, str, bytes]]:
    """(file suffix, caption, PNG bytes) for each plot the model's data allows."""
    out = []
    profile = profiles[0] if profiles else None
    what = f"estimated energy per sample ({profile} profile)" if profile else "operations"
    out.append(
        (
            "accuracy_energy",
            f"Test accuracy against {what}: baselines, modes and the cut-off sweep.",
            _png(lambda: plot_accuracy_energy(model, profile)),
        )
    )
    if any(m.get("populations") for m in model.get("modes", [])):
        out.append(
            (
                "spikes_per_layer",
                "Spikes per neuron per sample in each population, per mode.",
                _png(lambda: plot_spikes_per_layer(model)),
            )
        )
    raster = model.get("raster")
    if raster and raster.get("populations"):
        out.append(
            (
                "raster",
                "Spike raster of one test input: earlier (darker, larger) spikes are stronger.",
                _png(lambda: plot_raster(raster)),
            )
        )
    return out


# ----------------------------------------------------------------------------- html


def _table(model: Mapping[str, Any], profiles: Sequence[str]) -> str:
    baselines = model.get("baselines", {})
    dense = baselines.get("dense", {})
    zero = baselines.get("zero_skip", {})
    dense_macs = dense.get("dense_macs_per_sample")
    zero_ops = zero.get("zero_skip_ops_per_sample")
    zero_share = _ratio(zero_ops, dense_macs)
    head = [
        "mode",
        "test accuracy (%)",
        "agreement with full (%)",
        "synaptic ops per sample",
        "% of dense MACs",
        "ops vs zero-skipping",
        "spikes per neuron",
        *(f"estimated energy per sample (pJ, {p})" for p in profiles),
        "time per sample (ms, measured wall-clock, numpy event engine)",
    ]
    rows = []

    def row(cells: list[str], css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")

    def energies(entry: Mapping[str, Any]) -> list[str]:
        e = entry.get("energy_pj_per_sample", {})
        return [_fmt(e.get(p), "count") for p in profiles]

    if dense:
        row(
            [
                "dense ReLU baseline (every MAC)",
                _fmt(dense.get("accuracy"), "pct"),
                "—",
                _fmt(dense_macs, "count"),
                _fmt(100.0 if _num(dense_macs) else None, "share"),
                _fmt(_ratio(dense_macs, zero_ops), "ratio"),
                "—",
                *energies(dense),
                _fmt(dense.get("seconds_per_sample"), "ms"),
            ],
            "baseline",
        )
    if zero:
        row(
            [
                "zero-skipping ReLU baseline",
                _fmt(zero.get("accuracy"), "pct"),
                "—",
                _fmt(zero_ops, "count"),
                _fmt(None if zero_share is None else 100 * zero_share, "share"),
                _fmt(1.0 if _num(zero_ops) else None, "ratio"),
                "—",
                *energies(zero),
                _fmt(zero.get("seconds_per_sample"), "ms"),
            ],
            "baseline",
        )
    for mode in model.get("modes", []):
        ops = mode.get("synaptic_ops_per_sample")
        mode_dense = mode.get("dense_macs_per_sample", dense_macs)
        mode_zero = mode.get("zero_skip_ops_per_sample", zero_ops)
        share = _ratio(ops, mode_dense)
        row(
            [
                f"<strong>{_e(mode.get('name', '?'))}</strong>",
                _fmt(mode.get("accuracy"), "pct"),
                _fmt(mode.get("agreement_with_full"), "pct"),
                _fmt(ops, "count"),
                _fmt(None if share is None else 100 * share, "share"),
                _fmt(_ratio(ops, mode_zero), "ratio"),
                _fmt(mode.get("spikes_per_neuron"), "float"),
                *energies(mode),
                _fmt(mode.get("seconds_per_sample"), "ms"),
            ]
        )
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (
        '<div class="table-wrap"><table>'
        f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">Synaptic ops: one spike delivered through one non-zero weight (the dense '
        "row counts every multiply-accumulate, the zero-skipping row each non-zero activation "
        "times its fan-out). “ops vs zero-skipping” is the row's operations divided by the "
        "zero-skipping baseline's: below 1 the spikes beat a ReLU network that skips zeros. "
        "Times are measured wall-clock per sample in numpy (the event engine for the modes; the "
        "dense row is the numpy dense forward pass) and are not part of any energy estimate.</p>"
    )


def _savings(model: Mapping[str, Any], profiles: Sequence[str]) -> str:
    """One sentence per mode quoting its savings against dense and zero-skipping."""
    baselines = model.get("baselines", {})
    dense = baselines.get("dense", {})
    zero = baselines.get("zero_skip", {})
    modes = list(model.get("modes", []))
    full = next((m for m in modes if m.get("name") == "full"), None)
    items = []
    for mode in modes:
        parts = [f"<strong>{_e(mode.get('name', '?'))}</strong>: "]
        parts.append(f"{_fmt(mode.get('accuracy'), 'pct')} % test accuracy")
        if full is not None and mode is not full:
            a, f = _num(mode.get("accuracy")), _num(full.get("accuracy"))
            if a is not None and f is not None:
                parts.append(f" ({100 * (a - f):+.2f} pp against full)".replace("-", "−"))
        ops = mode.get("synaptic_ops_per_sample")
        vs_dense = _ratio(
            ops, mode.get("dense_macs_per_sample", dense.get("dense_macs_per_sample"))
        )
        vs_zero = _ratio(
            ops, mode.get("zero_skip_ops_per_sample", zero.get("zero_skip_ops_per_sample"))
        )
        if vs_dense is not None and vs_zero is not None:
            parts.append(
                f"; operations {100 * vs_dense:.1f} % of dense and {100 * vs_zero:.1f} % of "
                "zero-skipping"
            )
        shares = []
        for profile in profiles:
            e = _num(mode.get("energy_pj_per_sample", {}).get(profile))
            ed = _num(dense.get("energy_pj_per_sample", {}).get(profile))
            ez = _num(zero.get("energy_pj_per_sample", {}).get(profile))
            if e is not None and ed and ez:
                shares.append(f"{100 * e / ed:.1f} % / {100 * e / ez:.1f} % ({_e(profile)})")
        if shares:
            parts.append(
                "; estimated energy as a share of dense / zero-skipping: " + ", ".join(shares)
            )
        items.append("<li>" + "".join(parts) + ".</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _early_decision(model: Mapping[str, Any]) -> str:
    early = model.get("early_decision_alone")
    if not early:
        return ""
    changed = early.get("changed_predictions")
    share = _num(early.get("readout_ops_saved_share"))
    full_ops = early.get("readout_ops_per_sample_full")
    early_ops = early.get("readout_ops_per_sample_early")
    text = (
        "<p><strong>Certified early decision alone</strong> (full mode otherwise): "
        f"predictions changed on the test split: {_fmt(changed, 'count')}; readout operations per "
        f"sample {_fmt(full_ops, 'count')} → {_fmt(early_ops, 'count')}"
    )
    if share is not None:
        text += f" ({100 * share:.1f} % saved)"
    return text + ".</p>"


def _sources(profile: Mapping[str, Any]) -> str:
    out = []
    for source in profile.get("sources", []):
        if isinstance(source, Mapping):
            text = str(source.get("citation") or source.get("key") or "")
            if source.get("doi"):
                text += f" doi:{source['doi']}"
        else:
            text = str(source)
        if text:
            out.append(_e(text))
    return "; ".join(out) if out else "no source given"


def _how_to_read(results: Mapping[str, Any], profiles: Sequence[str]) -> str:
    described = {str(p.get("name")): p for p in results.get("profiles", [])}
    items = []
    for name in profiles:
        p = described.get(name, {})
        description = f" — {_e(p['description'])}" if p.get("description") else ""
        items.append(f"<li><code>{_e(name)}</code>{description} Sources: {_sources(p)}.</li>")
    dataset = results.get("dataset", {})
    return (
        "<h2>How to read this</h2>"
        "<p><strong>Energy figures are estimates</strong>, not measurements: operation and spike "
        "counts from the runs multiplied by per-operation energies (memory reads included) from "
        "named profiles:</p>"
        f"<ul>{''.join(items)}</ul>"
        "<p>Savings are quoted against two baselines for the same network and inputs: the "
        "<em>dense</em> ReLU network (every multiply-accumulate) and the <em>zero-skipping</em> "
        "ReLU network (skips zero activations, as any sparse accelerator can without spikes); a "
        "spiking mode is only a win if it beats the second. "
        f"The power-saving modes were calibrated on the calibration split "
        f"({_fmt(dataset.get('calibration'), 'count')} samples) and every figure here is measured "
        f"on the disjoint test split ({_fmt(dataset.get('test'), 'count')} samples). "
        "The certified early decision stops the readout only once no input still to come could "
        "change the answer, so it never changes a prediction: any accuracy a mode loses comes "
        "from its cut-offs (each model lists what the early decision alone changes and saves). "
        "Wall-clock times are measured on the numpy event engine "
        "and say nothing about energy on hardware.</p>"
    )


def render_html(
    results: Mapping[str, Any],
    figures: Mapping[str, Sequence[tuple[str, str, bytes]]] | None = None,
) -> str:
    """The report page for ``results``, with the given PNGs embedded (``{model: [(suffix,
    caption, png), ...]}``; drawn here if ``None``)."""
    profiles = _profile_names(results)
    models = list(_need_models(results))
    if figures is None:
        figures = {str(m.get("name")): _model_figures(m, profiles) for m in models}
    dataset = results.get("dataset", {})
    dataset_name = dataset.get("name", "unnamed dataset")
    splits = ", ".join(
        f"{_e(k)} {_fmt(dataset.get(k), 'count')}"
        for k in ("train", "calibration", "test")
        if k in dataset
    )
    meta = []
    if results.get("powersave_version"):
        meta.append(f"powersave {_e(results['powersave_version'])}")
    if results.get("created"):
        meta.append(f"created {_e(results['created'])}")
    if results.get("command"):
        meta.append(f"command <code>{_e(results['command'])}</code>")
    body = [
        "<h1>powersave report</h1>",
        f'<p class="meta">{" · ".join(meta)}</p>' if meta else "",
        f"<p>Dataset: <strong>{_e(dataset_name)}</strong>"
        + (f" (samples: {splits})" if splits else "")
        + ".</p>",
        _how_to_read(results, profiles),
    ]
    for model in models:
        name = str(model.get("name", "model"))
        body.append(f"<h2>Model <code>{_e(name)}</code></h2>")
        if model.get("architecture"):
            body.append(f"<p>Architecture: <code>{_e(model['architecture'])}</code></p>")
        facts = []
        if _num(model.get("torch_accuracy")) is not None:
            facts.append(f"PyTorch test accuracy {_fmt(model['torch_accuracy'], 'pct')} %")
        if _num(model.get("training_seconds")) is not None:
            facts.append(f"trained in {model['training_seconds']:.1f} s (measured)")
        if facts:
            body.append(f"<p>{'; '.join(facts)}.</p>")
        body.append("<h3>Savings</h3>" + _savings(model, profiles) + _early_decision(model))
        plots = []
        for suffix, caption, png in figures.get(name, []):
            data = base64.b64encode(png).decode("ascii")
            plots.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_e(name)} {_e(suffix)}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
        if plots:
            body.append(f'<div class="plots">{"".join(plots)}</div>')
        body.append("<h3>All modes</h3>" + _table(model, profiles))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>powersave report — {_e(dataset_name)}</title>\n<style>{_CSS}</style>\n"
        "</head>\n<body>\n" + "\n".join(b for b in body if b) + "\n</body>\n</html>\n"
    )


def _need_models(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    models = results.get("models") if isinstance(results, Mapping) else None
    if not isinstance(models, list):
        raise ReportError(
            "results has no 'models' list; give the dict the demo writes to results.json"
        )
    return models


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the plots and ``report.html`` for ``results`` into ``out_dir`` (created if needed).

    For each model ``<model>_accuracy_energy.png``, ``<model>_spikes_per_layer.png`` (if the
    modes carry populations) and ``<model>_raster.png`` (if the results carry a raster), then one
    self-contained ``report.html`` with the same PNGs embedded. Every file is written atomically.
    The accuracy-energy plot uses the first profile in ``results["profiles"]``.

    Args:
        results: the demo's results dict (the schema of ``results.json``).
        out_dir: the folder to write into.

    Returns:
        file name → path of every file written.
    """
    models = _need_models(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profiles = _profile_names(results)
    written: dict[str, Path] = {}
    figures: dict[str, list[tuple[str, str, bytes]]] = {}
    used: set[str] = set()
    for model in models:
        name = str(model.get("name", "model"))
        stem = _safe(name)
        while stem in used:
            stem += "_"
        used.add(stem)
        figures[name] = _model_figures(model, profiles)
        for suffix, _, png in figures[name]:
            path = out / f"{stem}_{suffix}.png"
            write_bytes_atomic(path, png)
            written[path.name] = path
    page = out / "report.html"
    write_text_atomic(page, render_html(results, figures))
    written[page.name] = page
    return written
