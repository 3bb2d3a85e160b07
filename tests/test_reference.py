"""The reference simulator against the ReLU network it must reproduce (DESIGN.md §1).

Every test first checks that spikes happened in every hidden population, then compares the
simulator with a dense pass.

Tolerances, derived rather than tuned:

* Against :func:`powersave.engine.dense.forward` (float32). With ``u = 2**-24`` and ``n`` the
  largest fan-in plus 2 (bias add, output rounding), one synaptic layer computed in float32 errs by
  at most ``γ_n (|W| |a| + |b|)``, ``γ_n = n u / (1 - n u)``, and an input error ``E`` reaches the
  output as at most ``|W| E`` (ReLU, clipping and max pooling are 1-Lipschitz). So after ``ℓ``
  synaptic layers ``|a_ℓ - exact| <= ℓ γ_n M_ℓ``, where ``M_ℓ`` is the *magnitude pass*: the
  network run with ``|W|``, ``|b|`` on the (non-negative) split input. The simulator itself is
  float64 with ``K = 1/dt`` accumulated steps per window: ``(ℓ + 1)(n + K + 8) ε M_ℓ`` bounds its
  share (``ε = 2**-52``), far below the float32 one. A spike time is off by the activation error
  over ``A_ℓ``, a few roundings of ``ℓ`` aside.
* Against the float64 dense pass written here: the simulator's share alone.

A neuron may fire in one computation and not the other only where its activation is within the
tolerance of the level that decides firing (0, or the cut-off level).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powersave.coding import decode, encode, split_on_off
from powersave.engine import dense, ops
from powersave.engine.reference import (
    ReferenceResult,
    _connectivity,
    _first_spike,
    _pool_members,
    simulate,
)
from powersave.errors import InputError
from powersave.graph.graph import Graph
from powersave.graph.nodes import (
    AvgPool,
    Conv,
    Dense,
    Flatten,
    Input,
    MaxPool,
    conv_output_hw,
)
from powersave.plan import Plan

U32 = 2.0**-24
EPS64 = float(np.finfo(np.float64).eps)
DT = 1e-3
STEPS = 1000
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


# -- networks -------------------------------------------------------------------------------------


def _mlp(rng: np.random.Generator, n_in: int, hidden: list[int], classes: int, signed: bool):
    """A Dense-only network; neuron 0 of each hidden layer has positive weights and bias, so it
    fires on every sample with any input spike: every hidden population has spikes."""
    nodes: list = [Input("x", (n_in,), 1.0, signed)]
    fan_in = 2 * n_in if signed else n_in
    for k, width in enumerate(hidden):
        weight = rng.normal(size=(width, fan_in)) / np.sqrt(fan_in)
        weight[0] = np.abs(weight[0])
        nodes.append(Dense(f"h{k}", weight, rng.uniform(0.05, 0.3, width), 1.0))
        fan_in = width
    readout = rng.normal(size=(classes, fan_in)) / np.sqrt(fan_in)
    nodes.append(Dense("out", readout, rng.normal(scale=0.1, size=classes)))
    return Graph(tuple(nodes))


def _conv_net(rng: np.random.Generator) -> Graph:
    """Signed 1×8×8 input → conv 4@3×3 pad 1 → max pool 2 → avg pool 2 stride 1 → flatten →
    dense 12 → readout 5. Channel 0 of the conv (all weights and bias positive) always fires."""
    conv_w = rng.normal(size=(4, 2, 3, 3)) / 3.0
    conv_w[0] = np.abs(conv_w[0])
    conv_b = rng.normal(scale=0.1, size=4)
    conv_b[0] = 0.1
    hidden_w = rng.normal(size=(12, 36)) / 6.0
    hidden_w[0] = np.abs(hidden_w[0])
    nodes = (
        Input("x", (1, 8, 8), 1.0, signed=True),
        Conv("conv", conv_w, conv_b, padding=(1, 1), scale=1.0),
        MaxPool("max", (2, 2)),
        AvgPool("avg", (2, 2), stride=(1, 1), scale=1.0),
        Flatten("flat"),
        Dense("hidden", hidden_w, rng.uniform(0.0, 0.2, 12), 1.0),
        Dense("out", rng.normal(size=(5, 12)) / np.sqrt(12), rng.normal(scale=0.1, size=5)),
    )
    return Graph(nodes)


def _calibrated(graph: Graph, x: np.ndarray) -> Graph:
    """Scales from the dense pass's maxima: no clipping anywhere."""
    activations = dense.forward(graph, x).activations
    scales = {p.source: float(a.max()) for p, a in zip(graph.populations, activations, strict=True)}
    return graph.with_scales(scales)


# -- dense passes in float64 ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    raw: list[np.ndarray]  # per population, the ReLU output (input: after the split)
    sent: list[np.ndarray]  # per population, what is passed on after `transform`
    logits: np.ndarray


def _pass64(
    graph: Graph,
    x: np.ndarray,
    transform: Callable[[int, np.ndarray], np.ndarray] = lambda _, a: a,
) -> Pass:
    """The ReLU network in float64 with ``engine.ops``; ``transform(ℓ, a)`` is applied to each
    population before it is passed on (cut-offs, clipping)."""
    a = split_on_off(np.asarray(x, dtype=np.float64), graph.input.signed)
    raw, sent = [a], [transform(0, a)]
    a = sent[0]
    for i, node in enumerate(graph.nodes[1:], start=1):
        if isinstance(node, Flatten):
            a = a.reshape(a.shape[0], -1)
        elif isinstance(node, MaxPool):
            a = ops.maxpool2d(a, node)
        else:
            z = ops.synaptic(a, node)
            if i == graph.readout_index:
                return Pass(raw, sent, z.reshape(z.shape[0], -1))
            raw.append(np.maximum(z, 0.0))
            sent.append(transform(len(sent), raw[-1]))
            a = sent[-1]
    raise AssertionError("no readout")


def _fan_in(node) -> int:
    if isinstance(node, Dense):
        return int(node.weight.shape[1])
    if isinstance(node, Conv):
        return int(np.prod(node.weight.shape[1:]))
    return int(np.prod(node.kernel))


@dataclass(frozen=True)
class Tolerance:
    populations: list[np.ndarray]  # per population, elementwise bound on the activation error
    logits: np.ndarray


def _tolerance(graph: Graph, x: np.ndarray, float32: bool) -> Tolerance:
    """The bounds of the module docstring, elementwise. ``float32``: against ``dense.forward``."""
    absolute = Graph(
        tuple(
            replace(n, weight=np.abs(n.weight), bias=np.abs(n.bias))
            if isinstance(n, Dense | Conv)
            else n
            for n in graph.nodes
        )
    )
    magnitude = _pass64(absolute, x)
    n = max(_fan_in(node) for node in graph.nodes if isinstance(node, Dense | Conv | AvgPool)) + 2
    gamma = n * U32 / (1 - n * U32) if float32 else 0.0
    reference = (n + STEPS + 8) * EPS64
    pops = [(ell * gamma + (ell + 1) * reference) * m for ell, m in enumerate(magnitude.raw)]
    depth = len(magnitude.raw)
    logits = (depth * gamma + (depth + 1) * reference) * magnitude.logits
    return Tolerance(pops, logits)


# -- comparisons ----------------------------------------------------------------------------------


def _assert_spikes_happened(result: ReferenceResult) -> None:
    for ell, t in enumerate(result.times):
        assert np.isfinite(t).any(), f"population {ell} never fired: the test would be vacuous"


def _assert_times_match(
    result: ReferenceResult,
    graph: Graph,
    expected: list[np.ndarray],
    tol: list[np.ndarray],
    levels: list[float] | None = None,
    raw: list[np.ndarray] | None = None,
) -> float:
    """Times equal ``encode(expected)`` within ``dt`` and within the derived bound.

    A neuron may fire on one side only where ``raw`` (default ``expected``) is within ``tol`` of
    the level deciding firing (0 or the cut-off level). Returns the largest time error.
    """
    worst = 0.0
    for ell, pop in enumerate(graph.populations):
        t = result.times[ell]
        a = expected[ell].astype(np.float64)
        r = a if raw is None else raw[ell]
        level = 0.0 if levels is None else levels[ell]
        want = encode(a, pop.scale, ell)
        assert t.shape == (a.shape[0], *pop.shape)
        finite = np.isfinite(t)
        assert np.all((t[finite] >= ell) & (t[finite] < ell + 1)), "a spike left its window"
        differ = finite != np.isfinite(want)
        near = np.abs(r - level) <= tol[ell]
        ref_near = ~finite | (np.abs(decode(t, pop.scale, ell) - level) <= tol[ell])
        assert np.all((near & ref_near)[differ]), f"population {ell}: firing differs"
        both = finite & np.isfinite(want)
        error = np.abs(np.where(both, t, 0.0) - np.where(both, want, 0.0))
        assert np.all(error <= DT)
        assert np.all(error <= tol[ell] / pop.scale + 8 * EPS64 * (ell + 2))
        worst = max(worst, float(error.max(initial=0.0)))
    return worst


# -- unrolling ------------------------------------------------------------------------------------


@st.composite
def _window_geometry(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    return shape, kernel, stride, padding


@SETTINGS
@given(_window_geometry(), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_unrolled_conv_equals_ops_conv2d(geometry, out_channels, seed) -> None:
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(out_channels, shape[0], *kernel))
    node = Conv("c", weight, rng.normal(size=out_channels), stride=stride, padding=padding)
    a = rng.normal(size=(2, *shape))
    w, b = _connectivity(node, shape)
    got = a.reshape(2, -1) @ w.T + b
    want = ops.conv2d(a, node).reshape(2, -1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(_window_geometry(), st.integers(0, 2**32 - 1))
def test_unrolled_pools_equal_ops_pools(geometry, seed) -> None:
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.0, 1.0, size=(2, *shape))
    avg = AvgPool("a", kernel, stride=stride, padding=padding, scale=1.0)
    w, b = _connectivity(avg, shape)
    np.testing.assert_allclose(
        a.reshape(2, -1) @ w.T + b, ops.avgpool2d(a, avg).reshape(2, -1), rtol=1e-12, atol=1e-15
    )
    # Max pooling on times: the first spike wins; some neurons silent.
    pool = MaxPool("m", kernel, stride=stride, padding=padding)
    times = np.where(rng.uniform(size=a.shape) < 0.3, np.inf, a)
    got = _first_spike(times.reshape(2, -1), _pool_members(pool, shape))
    np.testing.assert_array_equal(got, ops.minpool2d(times, pool).reshape(2, -1))


# -- the full code --------------------------------------------------------------------------------


def _check_against_dense(
    graph: Graph, x: np.ndarray, every_prediction: bool
) -> tuple[float, float]:
    """Claims (1)-(3) of the module docstring; returns the largest time and logit errors."""
    result = simulate(graph, x, dt=DT)
    _assert_spikes_happened(result)
    reference = dense.forward(graph, x)
    tol = _tolerance(graph, x, float32=True)
    time_error = _assert_times_match(result, graph, list(reference.activations), tol.populations)

    assert result.logits.shape == reference.logits.shape
    logit_error = np.abs(result.logits - reference.logits)
    assert np.all(logit_error <= tol.logits)

    # Much closer than dt: against the same network in float64 (clipped at A_ℓ, which only
    # touches the largest activation, calibrated in float32), only the simulator's rounding.
    scales = [p.scale for p in graph.populations]
    exact = _pass64(graph, x, lambda ell, a: np.minimum(a, scales[ell]))
    tol64 = _tolerance(graph, x, float32=False)
    _assert_times_match(result, graph, exact.sent, tol64.populations, raw=exact.raw)
    assert np.all(np.abs(result.logits - exact.logits) <= tol64.logits)

    want = reference.logits.argmax(axis=1)
    if every_prediction:
        np.testing.assert_array_equal(result.predictions, want)
    else:
        # Random networks may have near-ties: only a margin above twice the error decides.
        top2 = np.sort(reference.logits, axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > 2 * tol.logits.max(axis=1)
        np.testing.assert_array_equal(result.predictions[decided], want[decided])
    return time_error, float(logit_error.max())


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_in=st.integers(1, 6),
    hidden=st.lists(st.integers(1, 8), min_size=1, max_size=3),
    classes=st.integers(2, 5),
    batch=st.integers(1, 6),
    signed=st.booleans(),
)
def test_random_mlps_match_the_dense_pass(seed, n_in, hidden, classes, batch, signed) -> None:
    rng = np.random.default_rng(seed)
    graph = _mlp(rng, n_in, hidden, classes, signed)
    if signed:
        x = rng.normal(size=(batch, n_in)).astype(np.float32)
    else:
        x = rng.uniform(0.05, 1.0, size=(batch, n_in)).astype(np.float32)
    _check_against_dense(_calibrated(graph, x), x, every_prediction=False)


def test_mlp_matches_the_dense_pass() -> None:
    rng = np.random.default_rng(1)
    graph = _mlp(rng, 10, [16, 12], 4, signed=False)
    x = rng.uniform(0.0, 1.0, size=(16, 10)).astype(np.float32)
    _check_against_dense(_calibrated(graph, x), x, every_prediction=True)


def test_conv_net_with_signed_input_matches_the_dense_pass() -> None:
    rng = np.random.default_rng(2)
    graph = _conv_net(rng)
    x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    _check_against_dense(_calibrated(graph, x), x, every_prediction=True)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    geometry=_window_geometry(),
    channels=st.integers(1, 3),
    pools=st.sampled_from(["", "max", "avg", "max+avg"]),
    conv_readout=st.booleans(),
    signed=st.booleans(),
)
def test_random_conv_nets_match_the_dense_pass(
    seed, geometry, channels, pools, conv_readout, signed
) -> None:
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    in_channels = 2 * shape[0] if signed else shape[0]
    weight = rng.normal(size=(channels, in_channels, *kernel)) / np.sqrt(in_channels * 4)
    weight[0] = np.abs(weight[0])  # channel 0 always fires
    bias = rng.normal(scale=0.1, size=channels)
    bias[0] = 0.1
    nodes: list = [
        Input("x", shape, 1.0, signed),
        Conv("conv", weight, bias, stride=stride, padding=padding, scale=1.0),
    ]
    hw = conv_output_hw(shape[1:], kernel, stride, padding)
    for kind in filter(None, pools.split("+")):
        if min(hw) < 2:
            break  # a 2×2 pool no longer fits
        if kind == "max":
            nodes.append(MaxPool("max", (2, 2), stride=(1, 1)))
        else:
            nodes.append(AvgPool("avg", (2, 2), stride=(1, 1), padding=(1, 0), scale=1.0))
        hw = conv_output_hw(hw, (2, 2), (1, 1), (0, 0) if kind == "max" else (1, 0))
    if conv_readout:
        readout_w = rng.normal(size=(3, channels, 1, 1))
        nodes += [Conv("out", readout_w, rng.normal(size=3)), Flatten("flat")]
    else:
        features = channels * hw[0] * hw[1]
        readout_w = rng.normal(size=(3, features)) / np.sqrt(features)
        nodes += [Flatten("flat"), Dense("out", readout_w, rng.normal(size=3))]
    graph = Graph(tuple(nodes))
    if signed:
        x = rng.normal(size=(3, *shape)).astype(np.float32)
    else:
        x = rng.uniform(0.05, 1.0, size=(3, *shape)).astype(np.float32)
    _check_against_dense(_calibrated(graph, x), x, every_prediction=False)


# -- power plans ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_cutoffs_equal_dropping_weak_activations(which: str) -> None:
    rng = np.random.default_rng(3)
    if which == "mlp":
        graph = _mlp(rng, 10, [16, 12], 4, signed=True)
        x = rng.normal(size=(16, 10)).astype(np.float32)
    else:
        graph = _conv_net(rng)
        x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    graph = _calibrated(graph, x)
    cutoffs = (0.7, 0.5, 0.6, 0.8)[: len(graph.populations)]
    levels = [(1 - c) * p.scale for c, p in zip(cutoffs, graph.populations, strict=True)]

    scales = [p.scale for p in graph.populations]

    def drop(ell: int, a: np.ndarray) -> np.ndarray:
        # A spike after ℓ + c_ℓ is never sent: exactly the activations below (1 - c_ℓ) A_ℓ.
        # The clipping at A_ℓ only matters for the largest activation (calibrated in float32).
        return np.where(a >= levels[ell], np.minimum(a, scales[ell]), 0.0)

    expected = _pass64(graph, x, drop)
    result = simulate(graph, x, dt=DT, plan=Plan(cutoffs=cutoffs))
    _assert_spikes_happened(result)
    for ell, (raw, sent) in enumerate(zip(expected.raw, expected.sent, strict=True)):
        assert np.any((raw > 0) & (sent == 0)), f"population {ell}: the cut-off dropped nothing"
    tol = _tolerance(graph, x, float32=False)
    _assert_times_match(result, graph, expected.sent, tol.populations, levels, expected.raw)
    for ell, c in enumerate(cutoffs):
        assert np.all(result.times[ell][np.isfinite(result.times[ell])] <= ell + c)
    assert np.all(np.abs(result.logits - expected.logits) <= tol.logits)
    np.testing.assert_array_equal(result.predictions, expected.logits.argmax(axis=1))


def test_early_decision_is_ignored() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(4, 5)).astype(np.float32)
    graph = _calibrated(_mlp(rng, 5, [6], 3, signed=False), x)
    plain = simulate(graph, x, dt=1 / 64)
    early = simulate(graph, x, dt=1 / 64, plan=Plan(early_decision=True))
    _assert_spikes_happened(plain)
    np.testing.assert_array_equal(plain.logits, early.logits)


# -- saturation and the clock ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_saturated_neurons_fire_at_the_window_start(which: str) -> None:
    rng = np.random.default_rng(5)
    if which == "mlp":
        graph = _mlp(rng, 10, [16, 12], 4, signed=True)
        x = rng.normal(size=(16, 10)).astype(np.float32)
    else:
        graph = _conv_net(rng)
        x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    # Each scale half the largest activation its population gets once upstream is clipped.
    for ell, pop in enumerate(graph.populations):
        scales = [p.scale for p in graph.populations]
        clipped = _pass64(graph, x, lambda k, a, s=scales: np.minimum(a, s[k]))
        graph = graph.with_scales({pop.source: 0.5 * float(clipped.raw[ell].max())})
    scales = [p.scale for p in graph.populations]
    expected = _pass64(graph, x, lambda k, a: np.minimum(a, scales[k]))

    result = simulate(graph, x, dt=DT)
    _assert_spikes_happened(result)
    tol = _tolerance(graph, x, float32=False)
    for ell, pop in enumerate(graph.populations):
        saturated = expected.raw[ell] >= pop.scale * (1 + 1e-6)
        assert saturated.any(), f"population {ell}: nothing saturated"
        assert np.all(result.times[ell][saturated] == ell)  # exactly the window's start
    _assert_times_match(result, graph, expected.sent, tol.populations)
    assert np.all(np.abs(result.logits - expected.logits) <= tol.logits)


def test_spike_times_do_not_depend_on_the_clock_step() -> None:
    rng = np.random.default_rng(6)
    graph = _conv_net(rng)
    x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)
    graph = _calibrated(graph, x)
    fine = simulate(graph, x, dt=DT)
    coarse = simulate(graph, x, dt=1 / 8)
    _assert_spikes_happened(fine)
    for t_fine, t_coarse in zip(fine.times, coarse.times, strict=True):
        np.testing.assert_array_equal(np.isfinite(t_fine), np.isfinite(t_coarse))
        np.testing.assert_allclose(t_coarse, t_fine, rtol=0, atol=1e-10)
    np.testing.assert_allclose(coarse.logits, fine.logits, rtol=1e-10, atol=1e-10)


# -- arguments ------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_with_a_reason() -> None:
    rng = np.random.default_rng(7)
    graph = _mlp(rng, 3, [4], 2, signed=False)
    x = rng.uniform(size=(2, 3))
    with pytest.raises(ValueError, match="1/dt an integer"):
        simulate(graph, x, dt=0.3)
    with pytest.raises(ValueError, match=r"dt must be in \(0, 1\]"):
        simulate(graph, x, dt=0.0)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        simulate(graph, x[:, :2])
    with pytest.raises(InputError, match="NaN"):
        simulate(graph, np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="2 spiking populations"):
        simulate(graph, x, plan=Plan(cutoffs=(0.5,)))
