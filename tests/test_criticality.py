"""Criticality diagnostics: layer gains χ, branching ratios, damage spreading, power-law fits.

Graphs are built by hand (numpy only), so the expected values can be written down.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from powersave.criticality import (
    branching_ratio,
    damage_spreading,
    diagnose,
    fit_power_law,
    layer_gains,
)
from powersave.graph import Conv, Dense, Flatten, Graph, Input, MaxPool
from powersave.network import Network
from powersave.plan import Plan


def mlp_network(seed: int, sizes=(10, 8, 6, 3)) -> Network:
    rng = np.random.default_rng(seed)
    nodes: list = [Input("input", (sizes[0],), 1.0)]
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        readout = k == len(sizes) - 2
        nodes.append(
            Dense(
                f"fc{k}",
                rng.standard_normal((n_out, n_in)).astype(np.float32) / np.sqrt(n_in),
                (0.1 * rng.standard_normal(n_out)).astype(np.float32),
                None if readout else 4.0,
            )
        )
    return Network(Graph(tuple(nodes)))


def exact_chi(net: Network, x: np.ndarray, plan: Plan | None = None) -> list[float]:
    """‖diag(mask) W‖_F² / n_in per layer, averaged over samples, written out plainly."""
    plan = plan or Plan()
    pops = net.graph.populations
    dense = [n for n in net.graph.nodes if isinstance(n, Dense)]
    a = np.where(x >= (1 - plan.cutoff(0)) * pops[0].scale, x, 0.0).astype(np.float64)
    out = []
    for k, node in enumerate(dense):
        w = node.weight.astype(np.float64)
        z = a @ w.T + node.bias
        if k < len(dense) - 1:
            keep = (z > 0) & (z >= (1 - plan.cutoff(k + 1)) * pops[k + 1].scale)
        else:
            keep = np.ones_like(z, dtype=bool)
        per_sample = [((keep[s][:, None] * w) ** 2).sum() / w.shape[1] for s in range(len(a))]
        out.append(float(np.mean(per_sample)))
        a = np.where(keep, z, 0.0)
    return out


def test_layer_gains_match_the_exact_jacobian() -> None:
    net = mlp_network(0)
    x = np.random.default_rng(1).random((40, 10)).astype(np.float32)
    gains = layer_gains(net, x, probes=300, seed=0)
    assert [g.layer for g in gains] == ["fc0", "fc1", "fc2"]
    assert [g.readout for g in gains] == [False, False, True]
    assert [g.source for g in gains] == ["input", "fc0", "fc1"]
    np.testing.assert_allclose([g.chi for g in gains], exact_chi(net, x), rtol=0.08)
    assert all(g.stderr > 0 for g in gains)
    # Under a mode, a dropped activation passes no perturbation on.
    plan = Plan(cutoffs=(0.5, 0.8, 0.9))
    cut = layer_gains(net, x, mode=plan, probes=300, seed=0)
    np.testing.assert_allclose([g.chi for g in cut], exact_chi(net, x, plan), rtol=0.08)


def test_orthogonal_linear_layer_has_gain_g_squared() -> None:
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    g = 1.7
    graph = Graph(
        (
            Input("input", (6,), 1.0),
            Dense("fc", (g * q).astype(np.float32), np.zeros(6, np.float32), None),
        )
    )
    gains = layer_gains(Network(graph), rng.random((5, 6)), probes=4)
    assert gains[0].chi == pytest.approx(g**2, rel=1e-4)  # J = gQ: every σ² is g²


def test_layer_gains_through_conv_and_max_pool() -> None:
    rng = np.random.default_rng(3)
    graph = Graph(
        (
            Input("input", (1, 6, 6), 1.0),
            Conv(
                "conv",
                rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
                np.zeros(2, np.float32),
                (1, 1),
                (1, 1),
                3.0,
            ),
            MaxPool("pool", (2, 2)),
            Flatten("flat"),
            Dense(
                "out",
                rng.standard_normal((3, 18)).astype(np.float32) / 4,
                np.zeros(3, np.float32),
                None,
            ),
        )
    )
    x = rng.random((8, 1, 6, 6)).astype(np.float32)
    gains = layer_gains(Network(graph), x, probes=400, seed=1)
    # The readout sees the pooled conv output: its J is W restricted to the 18 pooled inputs,
    # and χ normalises by the 72 conv neurons of the population it reads.
    w = graph.nodes[-1].weight.astype(np.float64)
    assert gains[1].chi == pytest.approx((w**2).sum() / 72, rel=0.1)
    assert gains[0].chi > 0


def test_branching_ratio() -> None:
    assert branching_ratio([100, 50, 25]) == [0.5, 0.5]
    assert branching_ratio([0, 3, 6]) == [None, 2.0]
    assert branching_ratio([7]) == []


def diagonal_network(depth: int = 2, n: int = 5, gain: float = 0.5) -> Network:
    """Each neuron feeds only its namesake in the next layer: damage cannot spread sideways."""
    eye = (gain * np.eye(n)).astype(np.float32)
    nodes: list = [Input("input", (n,), 1.0)]
    for k in range(depth):
        nodes.append(Dense(f"h{k}", eye, np.zeros(n, np.float32), 1.0))
    nodes.append(Dense("out", np.ones((2, n), np.float32), np.zeros(2, np.float32), None))
    return Network(Graph(tuple(nodes)))


def test_damage_spreading_counts_exactly_the_changed_spikes() -> None:
    net = diagonal_network(depth=2)
    x = np.array([[0.9, 0.5, 0.0, 0.3, 0.8]], np.float32)  # 4 input spikes
    av = damage_spreading(net, x, per_sample=10)
    assert av.sizes.tolist() == [2, 2, 2, 2]  # one neuron per hidden layer each time
    assert av.layer_sizes.tolist() == [[1, 1]] * 4
    assert av.damage_branching_ratio() == [1.0, 1.0]
    assert not av.prediction_changed.any()
    summary = av.summary()
    assert summary["events"] == 4 and summary["zero_share"] == 0.0
    assert summary["histogram"] == {"size": [2], "count": [4]}
    # Moving a spike by less than the resolution changes nothing that counts.
    moved = damage_spreading(net, x, perturbation="move", shift=0.01, resolution=0.1)
    assert moved.sizes.tolist() == [0, 0, 0, 0]
    moved = damage_spreading(net, x, perturbation="move", shift=0.2, resolution=2**-8)
    assert moved.sizes.tolist() == [2, 2, 2, 2]
    # Spikes a mode never sends cannot be perturbed: only the 3 strongest pass c_0 = 0.6.
    cut = damage_spreading(net, x, mode=Plan(cutoffs=(0.6, 1.0, 1.0)))
    assert len(cut.sizes) == 3
    with pytest.raises(ValueError, match="perturbation"):
        damage_spreading(net, x, perturbation="swap")  # type: ignore[arg-type]


def test_damage_spreading_is_seeded_and_bounded_per_sample() -> None:
    net = mlp_network(4, sizes=(30, 20, 10, 3))
    x = np.random.default_rng(5).random((6, 30)).astype(np.float32)
    a = damage_spreading(net, x, per_sample=4, seed=3)
    b = damage_spreading(net, x, per_sample=4, seed=3)
    assert len(a.sizes) == 24
    assert np.array_equal(a.sizes, b.sizes)
    assert a.sizes.max() <= 30  # at most every hidden neuron
    assert (a.layer_sizes.sum(axis=1) == a.sizes).all()


def test_power_law_fit_recovers_the_exponent() -> None:
    pytest.importorskip("powerlaw")
    rng = np.random.default_rng(0)
    sizes = rng.zipf(2.5, size=3000)
    fit = fit_power_law(sizes, xmin=1)
    assert fit is not None
    assert fit.alpha == pytest.approx(2.5, abs=0.1)
    assert fit.n == fit.n_tail == 3000
    assert fit.vs_exponential["R"] > 0  # a power law beats an exponential on power-law data
    assert set(fit.to_dict()) >= {"alpha", "sigma", "xmin", "vs_exponential", "vs_lognormal"}
    assert fit_power_law([0, 0, 3]) is None  # too few events to fit
    assert fit_power_law([5] * 50) is None  # a single size has no tail to fit


def test_diagnose_gathers_everything_in_json_form() -> None:
    import json

    pytest.importorskip("powerlaw")
    net = mlp_network(6, sizes=(30, 20, 10, 3))
    x = np.random.default_rng(7).random((12, 30)).astype(np.float32)
    report = diagnose(net, x, chi_samples=8, avalanche_samples=6, per_sample=6)
    assert json.loads(json.dumps(report)) == report
    assert [g["layer"] for g in report["chi"]] == ["fc0", "fc1", "fc2"]
    assert len(report["branching_ratio"]) == 2 and len(report["spikes_per_sample"]) == 3
    assert report["avalanches"]["events"] == 36
    assert report["mode"] == "full" and report["samples"] == 12
