"""Calibrated modes: targets hold on the calibration data, plans persist, costs are ordered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import powersave
from powersave.engine import dense as dense_pass
from powersave.graph import Dense, Graph, Input
from powersave.network import Network
from powersave.power import Target, calibrate
from powersave.power.evaluate import evaluate


def teacher_network(seed: int = 0) -> tuple[Network, np.ndarray, np.ndarray]:
    """A random MLP and labels it mostly gets right (its own predictions, with 10 % noise)."""
    rng = np.random.default_rng(seed)
    g = Graph(
        (
            Input("x", (30,), 1.0),
            Dense("h1", rng.normal(size=(40, 30)) * 0.4, rng.normal(size=40) * 0.1, scale=1.0),
            Dense("h2", rng.normal(size=(20, 40)) * 0.3, rng.normal(size=20) * 0.1, scale=1.0),
            Dense("out", rng.normal(size=(5, 20)), np.zeros(5)),
        )
    )
    x = rng.random((400, 30)).astype(np.float32)
    x[rng.random(x.shape) < 0.4] = 0
    ann = dense_pass.forward(g, x)
    scales = {p.source: float(a.max()) for p, a in zip(g.populations, ann.activations, strict=True)}
    labels = ann.logits.argmax(1)
    noisy = rng.random(len(labels)) < 0.1
    labels[noisy] = rng.integers(0, 5, noisy.sum())
    return Network(g.with_scales(scales)), x, labels


def test_accuracy_targets_hold_on_the_calibration_data() -> None:
    net, x, y = teacher_network()
    result = calibrate(net, x, y, progress=False, confidence_z=0.0)
    calibrated = result.network
    full = calibrated.run(x)
    costs = []
    for name, loss in (("balanced", 0.5), ("saver", 2.0), ("ultra", 5.0)):
        run = calibrated.run(x, name)
        lost_pp = 100 * (full.accuracy(y) - run.accuracy(y))
        assert lost_pp <= loss + 1e-9, name
        assert result.modes[name]["calibration_accuracy_loss_pp"] == pytest.approx(lost_pp)
        costs.append(run.stats.synaptic_ops)
    assert costs[0] >= costs[1] >= costs[2]  # looser targets never cost more
    assert costs[2] < full.stats.synaptic_ops  # and the loosest saves something


def test_confidence_bound_is_more_cautious() -> None:
    net, x, y = teacher_network(1)
    plain = calibrate(net, x, y, progress=False, confidence_z=0.0).modes["balanced"]
    cautious = calibrate(net, x, y, progress=False, confidence_z=2.0).modes["balanced"]
    assert (
        cautious["calibration_synaptic_ops_per_sample"]
        >= plain["calibration_synaptic_ops_per_sample"]
    )
    assert cautious["calibration_loss_bound_pp"] <= 0.5 + 1e-9


def test_operation_budget_is_reached() -> None:
    net, x, y = teacher_network(2)
    full_ops = net.run(x).stats.synaptic_ops_per_sample
    budget = 0.6 * full_ops
    result = calibrate(net, x, y, {"budget": Target(synaptic_ops=budget)}, progress=False)
    assert result.modes["budget"]["calibration_synaptic_ops_per_sample"] <= budget
    run = result.network.run(x, "budget")
    assert run.stats.synaptic_ops_per_sample <= budget  # early decision only lowers it further


def test_modes_survive_save_and_load(tmp_path: Path) -> None:
    net, x, y = teacher_network(3)
    calibrated = net.calibrate(x, y, progress=False)
    path = tmp_path / "net.safetensors"
    powersave.save(calibrated, path)
    again = powersave.load(path)
    assert again.modes == ("full", "balanced", "saver", "ultra")
    for mode in again.modes:
        np.testing.assert_array_equal(again.run(x, mode).logits, calibrated.run(x, mode).logits)
    assert again.metadata["modes"]["saver"]["target"] == {"accuracy_loss_pp": 2.0}


def test_evaluate_reports_both_baselines_and_the_early_decision() -> None:
    net, x, y = teacher_network(4)
    calibrated = net.calibrate(x[:200], y[:200], progress=False)
    result = evaluate(calibrated, x[200:], y[200:])  # disjoint from the calibration half
    names = [m["name"] for m in result["modes"]]
    assert names == ["full", "balanced", "saver", "ultra"]
    full = result["modes"][0]
    assert full["agreement_with_full"] == 1.0
    assert full["synaptic_ops_per_sample"] == pytest.approx(full["zero_skip_ops_per_sample"])
    for mode in result["modes"]:
        assert set(mode["energy_pj_per_sample"]) == {"cmos45-fp32", "cmos45-int8", "loihi"}
        assert mode["synaptic_ops_per_sample"] <= mode["dense_macs_per_sample"]
    assert result["early_decision_alone"]["changed_predictions"] == 0
    assert 0 < result["early_decision_alone"]["readout_ops_saved_share"] < 1
    dense = result["baselines"]["dense"]["energy_pj_per_sample"]["cmos45-fp32"]
    zero_skip = result["baselines"]["zero_skip"]["energy_pj_per_sample"]["cmos45-fp32"]
    assert dense > zero_skip > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": {"full": Target(accuracy_loss_pp=1.0)}}, "'full' is built in"),
        ({"min_step": 0.5, "start_step": 0.2}, "min_step <= start_step"),
    ],
)
def test_bad_calibration_arguments(kwargs: dict, message: str) -> None:
    net, x, y = teacher_network(5)
    with pytest.raises(ValueError, match=message):
        calibrate(net, x, y, progress=False, **kwargs)


def test_bad_targets_and_labels() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        Target(accuracy_loss_pp=1.0, synaptic_ops=10.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        Target(accuracy_loss_pp=-1.0)
    net, x, y = teacher_network(6)
    with pytest.raises(ValueError, match="399 calibration labels for 400 inputs"):
        calibrate(net, x, y[:-1], progress=False)
    with pytest.raises(TypeError, match="integer class indices"):
        calibrate(net, x, y.astype(float), progress=False)


def test_an_unreachable_budget_is_reported() -> None:
    net, x, y = teacher_network(7)
    with pytest.warns(UserWarning, match="was not reached"):
        result = calibrate(net, x, y, {"tiny": Target(synaptic_ops=1.0)}, progress=False)
    assert result.modes["tiny"]["reached"] is False


def test_convolutional_readout_calibrates_without_early_decision() -> None:
    rng = np.random.default_rng(8)
    from powersave.graph import Conv, Flatten

    g = Graph(
        (
            Input("x", (1, 6, 6), 1.0),
            Conv("c1", rng.normal(size=(4, 1, 3, 3)), rng.normal(size=4) * 0.1, scale=1.0),
            Conv("population", rng.normal(size=(3, 4, 4, 4)), np.zeros(3)),  # a clashing name
            Flatten("f"),
        )
    )
    x = rng.random((120, 1, 6, 6)).astype(np.float32)
    ann = dense_pass.forward(g, x)
    g = g.with_scales({"x": 1.0, "c1": float(ann.activations[1].max())})
    y = ann.logits.argmax(1)
    result = calibrate(Network(g), x, y, progress=False)
    for mode in ("balanced", "saver", "ultra"):
        assert result.network.plan(mode).early_decision is False
        result.network.run(x, mode)
    assert evaluate(result.network, x, y)["early_decision_alone"] is None


def test_calibration_cache_matches_direct_runs() -> None:
    from powersave.power.calibrate import _Evaluator

    net, x, y = teacher_network(9)
    ev = _Evaluator(net.graph, x, y, lambda counts: counts["synaptic_ops"])
    for cutoffs in [(0.5, 1.0, 1.0), (0.5, 0.7, 1.0), (0.5, 0.7, 0.4), (1.0, 0.7, 0.4)]:
        point = ev.point(cutoffs)
        direct = net.run(x, powersave.Plan(cutoffs=cutoffs), baselines=False)
        assert point.synaptic_ops == pytest.approx(direct.stats.synaptic_ops_per_sample)
        assert point.spikes == pytest.approx(direct.stats.spikes_per_sample)
        assert point.correct == int(np.sum(direct.predictions == y))
