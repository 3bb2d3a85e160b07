"""The report: plots return the axes they drew on, files are valid PNGs, the HTML is self-contained
and escapes what it quotes."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure
from matplotlib.image import imread

from powersave.report import (
    ReportError,
    plot_accuracy_energy,
    plot_raster,
    plot_spikes_per_layer,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROFILES = ("cmos45-int8", "loihi")


def make_results(
    rng: np.random.Generator,
    mode_names: tuple[str, ...] = ("full", "<script>"),
    sizes: tuple[int, ...] = (16, 8),
    sweep: bool = True,
) -> dict:
    """A results dict in the demo's schema, with made-up but consistent numbers."""
    dense_macs = float(sum(a * b for a, b in zip(sizes, (*sizes[1:], 10), strict=True)))
    zero_ops = 0.3 * dense_macs
    populations = ["input", *(f"hidden{i}" for i in range(1, len(sizes)))]

    def energy(ops: float, per_op: float) -> dict[str, float]:
        return {p: ops * per_op * (k + 1) for k, p in enumerate(PROFILES)}

    modes = []
    for i, name in enumerate(mode_names):
        keep = 1.0 / (1 + i)
        ops = zero_ops * keep
        modes.append(
            {
                "name": name,
                "accuracy": 0.97 - 0.01 * i,
                "agreement_with_full": 1.0 - 0.005 * i,
                "synaptic_ops_per_sample": ops,
                "dense_macs_per_sample": dense_macs,
                "zero_skip_ops_per_sample": zero_ops,
                "spikes_per_neuron": 0.3 * keep,
                "spikes_per_hidden_neuron": 0.4 * keep,
                "energy_pj_per_sample": energy(ops, 1.5),
                "seconds_per_sample": 1e-4,
                "cutoffs": [1.0 - 0.2 * i] * len(sizes),
                "early_decision": i > 0,
                "readout_ops_saved_per_sample": 3.0 * i,
                "populations": [
                    {
                        "name": p,
                        "neurons": n,
                        "spikes_per_sample": n * 0.3 * keep,
                        "spikes_per_neuron": 0.3 * keep * (1 + 0.1 * j),
                    }
                    for j, (p, n) in enumerate(zip(populations, sizes, strict=True))
                ],
            }
        )
    raster_populations = []
    for window, (p, n) in enumerate(zip(populations, sizes, strict=True)):
        count = max(1, n // 3)
        raster_populations.append(
            {
                "name": p,
                "window": window,
                "neurons": n,
                "index": sorted(rng.choice(n, size=count, replace=False).tolist()),
                "time": (window + rng.uniform(0, 1, size=count)).tolist(),
            }
        )
    model = {
        "name": "mlp",
        "architecture": "Linear(16, 8) -> ReLU -> Linear(8, 10)",
        "torch_accuracy": 0.97,
        "training_seconds": 1.5,
        "baselines": {
            "dense": {
                "accuracy": 0.97,
                "dense_macs_per_sample": dense_macs,
                "energy_pj_per_sample": energy(dense_macs, 3.0),
                "seconds_per_sample": 2e-5,
            },
            "zero_skip": {
                "accuracy": 0.97,
                "zero_skip_ops_per_sample": zero_ops,
                "energy_pj_per_sample": energy(zero_ops, 2.0),
            },
        },
        "modes": modes,
        "early_decision_alone": {
            "changed_predictions": 0,
            "readout_ops_saved_share": 0.25,
            "readout_ops_per_sample_full": 40.0,
            "readout_ops_per_sample_early": 30.0,
        },
        "raster": {
            "sample": 3,
            "label": 7,
            "prediction": 7,
            "mode": mode_names[0],
            "populations": raster_populations,
        },
    }
    if sweep:
        model["sweep"] = [
            {
                "cutoff": c,
                "accuracy": 0.97 * (1 - (1 - c) ** 3),
                "synaptic_ops_per_sample": zero_ops * c,
                "energy_pj_per_sample": energy(zero_ops * c, 1.5),
            }
            for c in np.linspace(0.1, 1.0, 10).tolist()
        ]
    return {
        "powersave_version": "0.0.test",
        "created": "2025-01-01T00:00:00+00:00",
        "command": "powersave demo --out <out>",
        "dataset": {"name": "MNIST-10k sample", "train": 6000, "calibration": 2000, "test": 2000},
        "profiles": [
            {"name": p, "description": f"profile {p}", "sources": [f"Source for {p} & co"]}
            for p in PROFILES
        ],
        "models": [model],
    }


def test_write_report_writes_valid_pngs_and_self_contained_html(tmp_path):
    results = make_results(np.random.default_rng(0))
    written = write_report(results, tmp_path / "out")
    expected = {
        "mlp_accuracy_energy.png",
        "mlp_spikes_per_layer.png",
        "mlp_raster.png",
        "report.html",
    }
    assert set(written) == expected
    for name, path in written.items():
        assert path.exists() and path.parent == tmp_path / "out"
        if name.endswith(".png"):
            assert path.read_bytes().startswith(PNG_SIGNATURE)
            image = imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    page = written["report.html"].read_text(encoding="utf-8")
    assert "powersave report" in page
    assert "MNIST-10k sample" in page
    assert "full" in page
    assert "estimate" in page
    assert "&lt;script&gt;" in page
    assert "<script" not in page  # neither the mode's name nor any script of ours
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<link" not in page and "url(" not in page
    assert "Source for loihi &amp; co" in page
    for profile in PROFILES:
        assert f"estimated energy per sample (pJ, {profile})" in page
    assert "measured wall-clock" in page


def test_write_report_tolerates_missing_optional_keys(tmp_path):
    results = make_results(np.random.default_rng(1), sweep=False)
    model = results["models"][0]
    del model["raster"], model["early_decision_alone"]
    written = write_report(results, tmp_path)
    assert "mlp_raster.png" not in written
    assert "mlp_accuracy_energy.png" in written
    assert written["report.html"].read_text(encoding="utf-8").count("data:image/png") == 2


def test_write_report_rejects_results_without_models(tmp_path):
    with pytest.raises(ReportError, match="models"):
        write_report({"dataset": {"name": "x"}}, tmp_path)


def test_plots_draw_on_the_given_axes_and_return_it():
    results = make_results(np.random.default_rng(2))
    model = results["models"][0]
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert plot_accuracy_energy(model, "loihi", ax=axes[0]) is axes[0]
    assert plot_spikes_per_layer(model, ax=axes[1]) is axes[1]
    assert plot_raster(model["raster"], ax=axes[2]) is axes[2]
    assert axes[0].get_xlabel() == "estimated energy per sample (pJ, loihi)"
    assert axes[0].get_ylabel() == "test accuracy (%)"
    assert len(axes[1].patches) == 2 * 2  # two populations x two modes
    assert len(axes[2].collections) == 1


def test_plots_make_their_own_axes_without_one():
    model = make_results(np.random.default_rng(3))["models"][0]
    for ax in (
        plot_accuracy_energy(model, None),
        plot_spikes_per_layer(model),
        plot_raster(model["raster"]),
    ):
        assert isinstance(ax.figure, Figure)
    assert "operations" in plot_accuracy_energy(model, None).get_xlabel()


def test_accuracy_energy_names_the_missing_profile():
    model = make_results(np.random.default_rng(4))["models"][0]
    with pytest.raises(ReportError, match="nope"):
        plot_accuracy_energy(model, "nope")
