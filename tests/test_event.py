"""The event engine: hand-computed counts and spike times, early decision, cut-offs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powersave.engine import dense as dense_pass
from powersave.engine.event import run_events
from powersave.graph import Conv, Dense, Flatten, Graph, Input
from powersave.plan import Plan


def tiny_mlp() -> Graph:
    return Graph(
        (
            Input("x", (3,), scale=1.0),
            Dense("h", [[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]], [0.0, 0.0], scale=2.5),
            Dense("out", [[1.0, 1.0], [0.0, 1.0]], [0.0, 0.0]),
        )
    )


def conv_readout(kernel: list[list[float]], padding: int) -> Graph:
    return Graph(
        (
            Input("x", (1, 3, 3), scale=1.0),
            Conv("c", np.array(kernel, np.float32)[None, None], [0.0], padding=padding),
            Flatten("f"),
        )
    )


def test_conv_fanout_counts_borders_and_padding() -> None:
    x = np.ones((1, 1, 3, 3), np.float32)
    # 2x2 kernel, no padding: corners reach 1 output, edges 2, the centre 4.
    s = run_events(conv_readout([[1, 1], [1, 1]], 0), x).stats
    assert s.synaptic_ops == 4 * 1 + 4 * 2 + 1 * 4
    assert s.dense_macs == 2 * 2 * 4
    # With padding 1 the output is 4x4 and every pixel sits in 4 windows; dense MACs include
    # the padding taps.
    s = run_events(conv_readout([[1, 1], [1, 1]], 1), x).stats
    assert s.synaptic_ops == 9 * 4
    assert s.dense_macs == 4 * 4 * 4


def test_conv_fanout_skips_zero_taps() -> None:
    centre = np.zeros((1, 1, 3, 3), np.float32)
    centre[0, 0, 1, 1] = 1.0
    # The centre feeds output (1,1) through tap (0,0), which is zero: 3 operations, not 4.
    s = run_events(conv_readout([[0, 1], [1, 1]], 0), centre).stats
    assert s.synaptic_ops == 3
    assert s.spikes == (1,)


def test_saturation_is_counted_and_fires_at_window_start() -> None:
    g = tiny_mlp().with_scales({"h": 1.0})
    run = run_events(g, np.array([[0.5, 0.0, 1.0]], np.float32), record_spikes=True)
    assert run.times is not None
    np.testing.assert_allclose(run.times[1], [[1.0, 1.0]])
    assert run.stats.saturated == (0, 1)
    np.testing.assert_allclose(run.logits, [[2.0, 1.0]])  # clipped: (1, 1) @ W.T


def random_readout(seed: int, hidden: int, classes: int) -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = Graph(
        (
            Input("x", (hidden,), scale=1.0),
            Dense("out", rng.normal(size=(classes, hidden)), rng.normal(size=classes) * 0.1),
        )
    )
    x = rng.random((64, hidden)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0.0  # silent inputs are among the "not yet arrived"
    return g, x


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    hidden=st.integers(1, 40),
    classes=st.integers(2, 12),
    cutoff=st.sampled_from([1.0, 0.8, 0.5]),
)
def test_certified_early_decision_never_changes_a_prediction(
    seed: int, hidden: int, classes: int, cutoff: float
) -> None:
    g, x = random_readout(seed, hidden, classes)
    assert np.isfinite(run_events(g, x, record_spikes=True).times[0]).any()  # type: ignore[index]
    cut = (cutoff,)
    full = run_events(g, x, Plan(cutoffs=cut))
    early = run_events(g, x, Plan(cutoffs=cut, early_decision=True))
    np.testing.assert_array_equal(early.logits.argmax(1), full.logits.argmax(1))
    assert early.stats.synaptic_ops <= full.stats.synaptic_ops
    assert early.stats.readout_ops_saved == full.stats.synaptic_ops - early.stats.synaptic_ops
    assert (early.decision_times <= 1.0).all()


def test_early_decision_saves_operations_on_a_clear_case() -> None:
    # Input 0 votes strongly for class 0 and arrives first; nothing later can overturn it.
    g = Graph((Input("x", (3,), 1.0), Dense("out", [[5.0, 0.1, 0.1], [0.0, 0.2, 0.2]], [0, 0])))
    run = run_events(g, np.array([[1.0, 0.5, 0.4]], np.float32), Plan(early_decision=True))
    assert run.logits.argmax() == 0
    assert run.stats.synaptic_ops == 1  # one spike; its weight to class 1 is zero
    assert run.stats.readout_ops_saved == 4
    assert run.decision_times[0] == 0.0


def test_confident_margin_stops_no_later_than_certified() -> None:
    g, x = random_readout(3, 30, 10)
    certified = run_events(g, x, Plan(early_decision=True))
    confident = run_events(g, x, Plan(early_decision=True, margin=0.5))
    assert confident.stats.synaptic_ops <= certified.stats.synaptic_ops
    assert (confident.decision_times <= certified.decision_times).all()


def test_full_matches_dense_pass_without_clipping() -> None:
    rng = np.random.default_rng(7)
    g = Graph(
        (
            Input("x", (10,), 1.0, signed=True),
            Dense("h1", rng.normal(size=(16, 20)), rng.normal(size=16) * 0.1, scale=1.0),
            Dense("h2", rng.normal(size=(8, 16)) * 0.5, rng.normal(size=8) * 0.1, scale=1.0),
            Dense("out", rng.normal(size=(4, 8)), np.zeros(4)),
        )
    )
    x = rng.normal(size=(100, 10)).astype(np.float32)
    ann = dense_pass.forward(g, x)
    g = g.with_scales(
        {p.source: float(a.max()) for p, a in zip(g.populations, ann.activations, strict=True)}
    )
    run = run_events(g, x)
    assert all(s > 0 for s in run.stats.spikes)
    assert run.stats.saturated == (0, 0, 0)
    np.testing.assert_allclose(run.logits, ann.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(run.logits.argmax(1), ann.logits.argmax(1))
    assert run.stats.synaptic_ops == run.stats.zero_skip_ops


def test_cutoff_reduces_the_operations_of_the_population_it_cuts() -> None:
    g, x = random_readout(11, 50, 5)
    ops = [run_events(g, x, Plan(cutoffs=(c,))).stats.synaptic_ops for c in (1.0, 0.7, 0.3)]
    assert ops[0] > ops[1] > ops[2] > 0


def test_plan_with_wrong_number_of_cutoffs_is_refused() -> None:
    with pytest.raises(ValueError, match="has 3 cut-offs, the network has 2 spiking"):
        run_events(tiny_mlp(), np.ones((1, 3), np.float32), Plan(cutoffs=(1.0, 0.5, 0.5)))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    cutoffs=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    layer=st.integers(0, 2),
    lower=st.floats(0.05, 1.0),
)
def test_lowering_a_cutoff_never_adds_operations_to_the_spikes_it_cuts(
    seed: int, cutoffs: list[float], layer: int, lower: float
) -> None:
    """Property: population ℓ's outgoing operations never grow when its cut-off drops.

    (Downstream layers may grow: a dropped spike with a negative weight can let a later neuron
    fire. DESIGN notes in docs/design.md; calibration measures totals.)
    """
    rng = np.random.default_rng(seed)
    g = Graph(
        (
            Input("x", (12,), 1.0),
            Dense("h1", rng.normal(size=(10, 12)), rng.normal(size=10) * 0.2, scale=2.0),
            Dense("h2", rng.normal(size=(8, 10)), rng.normal(size=8) * 0.2, scale=2.0),
            Dense("out", rng.normal(size=(3, 8)), np.zeros(3)),
        )
    )
    x = rng.random((32, 12)).astype(np.float32)
    high = list(cutoffs)
    low = list(cutoffs)
    low[layer] = min(lower, high[layer])
    a = run_events(g, x, Plan(cutoffs=tuple(high)))
    b = run_events(g, x, Plan(cutoffs=tuple(low)))
    assert b.stats.layer_synaptic_ops[layer] <= a.stats.layer_synaptic_ops[layer]
    assert b.stats.spikes[layer] <= a.stats.spikes[layer]
    # Everything upstream of the cut is untouched.
    assert b.stats.layer_synaptic_ops[:layer] == a.stats.layer_synaptic_ops[:layer]


def test_early_decision_agrees_with_full_at_exact_ties() -> None:
    """Two classes with the same weights in another order: exact ties in real arithmetic."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=64).astype(np.float32)
    w1 = w0[rng.permutation(64)]
    x = np.repeat(rng.random((256, 1)), 64, axis=1).astype(np.float32)
    g = Graph((Input("x", (64,), 1.0), Dense("out", np.stack([w0, w1]), np.zeros(2))))
    full = run_events(g, x)
    early = run_events(g, x, Plan(early_decision=True))
    np.testing.assert_array_equal(early.logits.argmax(1), full.logits.argmax(1))


def test_early_decision_agrees_with_full_under_cancellation() -> None:
    """Huge weights of both signs cancel: float32 rounding of the full pass is large."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.uniform(0.3, 1.0, size=(1, 8)).astype(np.float32)
        w0 = (rng.uniform(5e3, 2e4, size=8) * rng.choice([-1, 1], size=8)).astype(np.float32)
        w0[-1] = np.float32(-float(a[0, :-1] @ w0[:-1]) / float(a[0, -1]))
        exact = float(a[0].astype(np.float64) @ w0.astype(np.float64))
        bias = np.array([0.0, exact + rng.choice([-3e-5, 3e-5])], np.float32)
        g = Graph((Input("x", (8,), 1.0), Dense("out", np.stack([w0, np.zeros(8)]), bias)))
        full = run_events(g, a)
        early = run_events(g, a, Plan(early_decision=True))
        assert early.logits.argmax() == full.logits.argmax()
