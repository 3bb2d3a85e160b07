"""One conformance suite for every event engine: the numpy engine and the compiled one.

Each engine must (1) reproduce hand-computed spike times and counts, (2) agree with the
reference simulator, the executable specification, and (3) keep the early decision certified.
The compiled engine must moreover give the numpy engine's answers: the same spikes (firing
pattern equal, times equal up to float32 rounding of the potentials), exactly the same counts,
the same predictions, logits equal to float32 tolerance, with every kernel choice of the planner.

Networks are built directly from graph nodes (no PyTorch) with random weights, scales set from
the ReLU network's activations at a percentile (so some neurons saturate), and cover signed
inputs, padding, strides, max and average pooling, and a convolutional readout. Every test first
checks that spikes occurred.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest

from powersave.engine import dense as dense_pass
from powersave.engine.compiled import run_compiled
from powersave.engine.event import EventResult, run_events
from powersave.engine.planner import CostModel
from powersave.engine.reference import simulate
from powersave.graph import AvgPool, Conv, Dense, Flatten, Graph, Input, MaxPool
from powersave.plan import Plan

Engine = Callable[..., EventResult]

ENGINES: dict[str, Engine] = {
    "numpy": run_events,
    "compiled": run_compiled,
}
#: A planner that runs every batch layer by layer and picks the event kernel everywhere: Dense
#: layers then take intensities over the batch (kernels.scatter_batch), as large batches do.
LAYERED_EVENT = CostModel(mac={"dense": 1e3, "conv": 1e3, "avgpool": 1e3}, min_batch=1)

#: The compiled engine with each kernel choice: fused event kernels, the planner, forced dense,
#: event kernels layer by layer.
COMPILED: dict[str, Engine] = {
    "event": functools.partial(run_compiled, kernels="event"),
    "auto": functools.partial(run_compiled, kernels="auto"),
    "dense": functools.partial(run_compiled, kernels="dense"),
    "layered-event": functools.partial(run_compiled, cost_model=LAYERED_EVENT),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Engine:
    return ENGINES[request.param]


# -- random networks -------------------------------------------------------------------------------


def _calibrated(nodes: list, x: np.ndarray, percentile: float) -> Graph:
    """Scales at a percentile of each population's positive activations (some saturate)."""
    g = Graph(tuple(nodes))
    ann = dense_pass.forward(g, x)
    scales = {}
    for pop, a in zip(g.populations, ann.activations, strict=True):
        positive = a[a > 0]
        scales[pop.source] = float(np.percentile(positive, percentile)) if positive.size else 1.0
    return g.with_scales(scales)


def mlp(seed: int, signed: bool = False) -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_in = 24
    x = rng.random((48, n_in)).astype(np.float32)
    x[rng.random(x.shape) < 0.4] = 0.0
    if signed:
        x = (x - 0.3).astype(np.float32)
    f = 2 * n_in if signed else n_in
    nodes = [
        Input("x", (n_in,), 1.0, signed=signed),
        Dense("h1", rng.normal(size=(32, f)) / np.sqrt(f), rng.normal(size=32) * 0.1, scale=1.0),
        Dense("h2", rng.normal(size=(16, 32)) / 4, rng.normal(size=16) * 0.1, scale=1.0),
        Dense("out", rng.normal(size=(5, 16)), rng.normal(size=5) * 0.1),
    ]
    return _calibrated(nodes, x, 95), x


def cnn(seed: int, pool: str, signed: bool = False) -> tuple[Graph, np.ndarray]:
    """Conv (padding) → pool (max or avg, with padding) → conv (stride 2) → flatten → dense ×2."""
    rng = np.random.default_rng(seed)
    x = rng.random((24, 2, 9, 9)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0.0
    if signed:
        x = (x - 0.3).astype(np.float32)
    c_in = 4 if signed else 2
    conv1 = Conv("c1", rng.normal(size=(5, c_in, 3, 3)) / 3, rng.normal(size=5) * 0.1, padding=1)
    conv1 = Conv(conv1.name, conv1.weight, conv1.bias, padding=(1, 1), scale=1.0)
    if pool == "max":
        pooling = MaxPool("p", kernel=3, stride=2, padding=1)  # 9 → 5
    else:
        pooling = AvgPool("p", kernel=3, stride=2, padding=1, scale=1.0)  # 9 → 5
    weight2 = rng.normal(size=(6, 5, 3, 2)) / 3
    weight2[:, :, 0, 0] = 0.0  # zero taps: fewer operations than connections
    conv2 = Conv("c2", weight2, rng.normal(size=6) * 0.1, stride=(2, 1), padding=(1, 0), scale=1.0)
    nodes = [
        Input("x", (2, 9, 9), 1.0, signed=signed),
        conv1,
        pooling,
        conv2,  # (6, 3, 4)
        Flatten("f"),
        Dense("h", rng.normal(size=(12, 72)) / 6, rng.normal(size=12) * 0.1, scale=1.0),
        Dense("out", rng.normal(size=(4, 12)), rng.normal(size=4) * 0.1),
    ]
    return _calibrated(nodes, x, 97), x


def conv_readout(seed: int) -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((16, 1, 6, 6)).astype(np.float32)
    nodes = [
        Input("x", (1, 6, 6), 1.0),
        Conv("c", rng.normal(size=(3, 1, 3, 3)), rng.normal(size=3) * 0.1, stride=2, scale=1.0),
        Conv("out", rng.normal(size=(2, 3, 2, 2)), np.zeros(2)),
        Flatten("f"),
    ]
    return _calibrated(nodes, x, 90), x


def cnn_dense_channels(seed: int) -> tuple[Graph, np.ndarray]:
    """Many channels firing at each position (the convolution's position-by-position path):
    8 input channels on a non-square image, every value positive; a stride-1 convolution with
    a non-square kernel and padding as wide as the kernel (edge columns see only padding),
    another without padding, then dense layers."""
    rng = np.random.default_rng(seed)
    x = (0.05 + rng.random((20, 8, 7, 9))).astype(np.float32)
    nodes = [
        Input("x", (8, 7, 9), 1.1),
        Conv("c1", rng.normal(size=(6, 8, 3, 2)) / 5, rng.normal(size=6) * 0.1 + 0.2,
             padding=(1, 2), scale=1.0),  # (6, 7, 12)
        Conv("c2", rng.normal(size=(5, 6, 3, 3)) / 5, rng.normal(size=5) * 0.1 + 0.2, scale=1.0),
        Flatten("f"),  # 5 x 5 x 10
        Dense("h", rng.normal(size=(10, 250)) / 14, rng.normal(size=10) * 0.1, scale=1.0),
        Dense("out", rng.normal(size=(3, 10)), rng.normal(size=3) * 0.1),
    ]  # fmt: skip
    return _calibrated(nodes, x, 97), x


def readout_ties(seed: int) -> tuple[Graph, np.ndarray]:
    """A readout straight on the inputs, quantised to eighths: many spikes arrive at the same
    time, across the early decision's blocks of eight."""
    rng = np.random.default_rng(seed)
    x = (np.round(rng.random((40, 40)) * 8) / 8).astype(np.float32)
    nodes = [
        Input("x", (40,), 1.0),
        Dense("out", rng.normal(size=(4, 40)) / 3, rng.normal(size=4) * 0.1),
    ]
    return _calibrated(nodes, x, 97), x


NETWORKS: dict[str, Callable[[int], tuple[Graph, np.ndarray]]] = {
    "mlp": mlp,
    "mlp-signed": functools.partial(mlp, signed=True),
    "cnn-max": functools.partial(cnn, pool="max"),
    "cnn-avg": functools.partial(cnn, pool="avg"),
    "cnn-max-signed": functools.partial(cnn, pool="max", signed=True),
    "conv-readout": conv_readout,
    "cnn-dense-channels": cnn_dense_channels,
    "readout-ties": readout_ties,
}


def plans(graph: Graph) -> dict[str, Plan]:
    n = graph.n_windows
    cut = tuple(0.9 - 0.2 * (i % 3) for i in range(n))
    out = {"full": Plan(), "cut": Plan(cutoffs=cut)}
    if isinstance(graph.readout, Dense):
        out["early"] = Plan(early_decision=True)
        out["cut+early"] = Plan(cutoffs=cut, early_decision=True)
        out["margin"] = Plan(cutoffs=cut, early_decision=True, margin=0.3)
    return out


def assert_spiking(result: EventResult) -> None:
    """Every population sent spikes: the comparison below is not vacuous."""
    assert result.times is not None
    assert all(np.isfinite(t).any() for t in result.times), result.stats.spikes


# -- (1) hand-computed ----------------------------------------------------------------------------


def test_tiny_mlp_hand_computed(engine: Engine) -> None:
    g = Graph(
        (
            Input("x", (3,), scale=1.0),
            Dense("h", [[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]], [0.0, 0.0], scale=2.5),
            Dense("out", [[1.0, 1.0], [0.0, 1.0]], [0.0, 0.0]),
        )
    )
    run = engine(g, np.array([[0.5, 0.0, 1.0]], np.float32), record_spikes=True)
    assert_spiking(run)
    assert run.times is not None
    # Input: 0.5 fires at 1 - 0.5 = 0.5, 1.0 at the window start, 0 never.
    np.testing.assert_allclose(run.times[0], [[0.5, np.inf, 0.0]])
    # Hidden z = (2.5, 1.0) with A = 2.5: 2.5 fires at 1.0, 1.0 at 1 + 1 - 1/2.5 = 1.6.
    np.testing.assert_allclose(run.times[1], [[1.0, 1.6]], rtol=1e-6)
    np.testing.assert_allclose(run.logits, [[3.5, 1.0]], rtol=1e-6)
    s = run.stats
    assert s.spikes == (2, 2)
    # Fan-out: input 0 reaches 1 neuron, input 2 reaches 2; hidden 0 reaches 1, hidden 1 two.
    assert s.layer_synaptic_ops == (3, 3)
    assert s.layer_dense_macs == (6, 4)
    assert s.layer_zero_skip_ops == (3, 3)
    assert (s.synaptic_ops, s.dense_macs, s.zero_skip_ops) == (6, 10, 6)
    assert s.neuron_updates == 4
    assert s.spikes_per_neuron == pytest.approx(4 / 5)


def test_early_decision_hand_computed(engine: Engine) -> None:
    # Input 0 votes strongly for class 0 and arrives first; nothing later can overturn it.
    g = Graph((Input("x", (3,), 1.0), Dense("out", [[5.0, 0.1, 0.1], [0.0, 0.2, 0.2]], [0, 0])))
    run = engine(g, np.array([[1.0, 0.5, 0.4]], np.float32), Plan(early_decision=True))
    assert run.stats.spikes == (3,)
    assert run.logits.argmax() == 0
    assert run.stats.synaptic_ops == 1
    assert run.stats.readout_ops_saved == 4
    assert run.decision_times[0] == 0.0


def test_max_pool_relays_the_first_spike(engine: Engine) -> None:
    g = Graph(
        (
            Input("x", (1, 2, 2), 1.0),
            MaxPool("p", kernel=2),
            Flatten("f"),
            Dense("out", [[2.0]], [0.0]),
        )
    )
    run = engine(g, np.array([[[[0.2, 0.7], [0.0, 0.5]]]], np.float32), record_spikes=True)
    assert run.stats.spikes == (3,)
    assert run.stats.synaptic_ops == 1  # only the pool's winner is delivered
    np.testing.assert_allclose(run.logits, [[1.4]], rtol=1e-6)


# -- (2) the reference simulator -----------------------------------------------------------------


REFERENCE_DT = 1 / 200


@functools.cache
def reference_case(network: str, cut: bool) -> tuple[Graph, np.ndarray, Plan, object]:
    """A small batch, its plan and the reference simulator's answer (shared by the engines)."""
    graph, x = NETWORKS[network](3)
    x = x[:6]
    plan = plans(graph)["cut" if cut else "full"]
    return graph, x, plan, simulate(graph, x, dt=REFERENCE_DT, plan=plan)


@pytest.mark.parametrize("network", ["mlp-signed", "cnn-max", "cnn-avg", "conv-readout"])
@pytest.mark.parametrize("cut", [False, True])
def test_agrees_with_the_reference_simulator(engine: Engine, network: str, cut: bool) -> None:
    graph, x, plan, reference = reference_case(network, cut)
    run = engine(graph, x, plan, record_spikes=True)
    assert_spiking(run)
    assert run.times is not None
    for ref_t, ev_t in zip(reference.times, run.times, strict=True):  # type: ignore[attr-defined]
        both = np.isfinite(ref_t) & np.isfinite(ev_t)
        edge = np.isfinite(ref_t) != np.isfinite(ev_t)  # right at a cut-off or at zero
        assert edge.mean() < 0.02
        assert np.abs(ref_t[both] - ev_t[both]).max(initial=0.0) <= REFERENCE_DT
    np.testing.assert_allclose(run.logits, reference.logits, rtol=1e-3, atol=1e-3)  # type: ignore[attr-defined]


# -- (3) the certified early decision --------------------------------------------------------------


def readout_only(seed: int) -> tuple[Graph, np.ndarray]:
    """A readout whose first class has a few strong inputs: decisions often come early."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(3, 40))
    weight[0] += 2.0 * (rng.random(40) < 0.2)
    x = rng.random((48, 40)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0.0  # silent inputs are among the "not yet arrived"
    return Graph((Input("x", (40,), 1.0), Dense("out", weight, rng.normal(size=3) * 0.1))), x


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cutoff", [1.0, 0.8])
def test_certified_early_decision_never_changes_a_prediction(
    engine: Engine, seed: int, cutoff: float
) -> None:
    graph, x = readout_only(seed)
    full = engine(graph, x, Plan(cutoffs=(cutoff,)), record_spikes=True)
    assert_spiking(full)
    early = engine(graph, x, Plan(cutoffs=(cutoff,), early_decision=True))
    np.testing.assert_array_equal(early.logits.argmax(1), full.logits.argmax(1))
    assert early.stats.synaptic_ops <= full.stats.synaptic_ops
    assert early.stats.readout_ops_saved == full.stats.synaptic_ops - early.stats.synaptic_ops
    assert early.stats.readout_ops_saved > 0
    assert (early.decision_times <= 1.0).all()


# -- the compiled engine gives the numpy engine's answers ------------------------------------------


def assert_same_run(expected: EventResult, got: EventResult) -> None:
    """Same spikes, same counts, same predictions; potentials to float32 tolerance."""
    e, g = expected.stats, got.stats
    for name in (
        "n_samples",
        "populations",
        "neurons",
        "spikes",
        "saturated",
        "layers",
        "layer_synaptic_ops",
        "layer_dense_macs",
        "layer_zero_skip_ops",
        "neuron_updates",
        "readout_ops_saved",
    ):
        assert getattr(g, name) == getattr(e, name), name
    assert expected.times is not None and got.times is not None
    assert expected.fired is not None and got.fired is not None
    for which in ("times", "fired"):
        for t_e, t_g in zip(getattr(expected, which), getattr(got, which), strict=True):
            assert t_g.shape == t_e.shape and t_g.dtype == t_e.dtype
            np.testing.assert_array_equal(np.isfinite(t_g), np.isfinite(t_e))
            np.testing.assert_allclose(t_g, t_e, rtol=0, atol=2e-6)
    scale = max(1.0, float(np.abs(expected.logits).max()))
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(got.logits.argmax(1), expected.logits.argmax(1))
    np.testing.assert_allclose(got.decision_times, expected.decision_times, rtol=0, atol=2e-6)
    assert got.logits.dtype == np.float32


@pytest.mark.parametrize("kernels", sorted(COMPILED))
@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_equals_numpy(kernels: str, network: str, seed: int) -> None:
    graph, x = NETWORKS[network](seed)
    if kernels == "auto":  # a batch big enough for the planner to weigh dense kernels
        x = np.concatenate([x] * 3)
    for name, plan in plans(graph).items():
        expected = run_events(graph, x, plan, record_spikes=True)
        assert_spiking(expected)
        got = COMPILED[kernels](graph, x, plan, record_spikes=True)
        try:
            assert_same_run(expected, got)
        except AssertionError as exc:
            raise AssertionError(f"plan {name}: {exc}") from exc
        assert got.stats.engine == "event-compiled"
        assert len(got.stats.kernels) == len(got.stats.layers)
        if kernels == "layered-event":  # again, with the plan's profile: Dense chains
            assert set(got.stats.kernels) == {"event"}
            assert_same_run(expected, COMPILED[kernels](graph, x, plan, record_spikes=True))


@pytest.mark.parametrize("network", ["mlp-signed", "cnn-max", "cnn-avg"])
def test_one_sample_at_a_time_equals_the_batch(network: str) -> None:
    graph, x = NETWORKS[network](5)
    plan = plans(graph)["cut+early"]
    batch = run_compiled(graph, x, plan, record_spikes=True)
    assert_spiking(batch)
    for i in range(0, len(x), 7):
        one = run_compiled(graph, x[i : i + 1], plan)
        # A large batch may run a layer on BLAS (planner), a single sample never: float32
        # rounding apart, the same answer.
        np.testing.assert_allclose(one.logits[0], batch.logits[i], rtol=1e-5, atol=1e-6)
        assert one.logits[0].argmax() == batch.logits[i].argmax()
        np.testing.assert_allclose(one.decision_times[0], batch.decision_times[i], atol=2e-6)
    forced = run_compiled(graph, x, plan, kernels="event")  # one kernel: bit for bit
    for i in range(0, len(x), 7):
        one = run_compiled(graph, x[i : i + 1], plan)
        np.testing.assert_array_equal(one.logits[0], forced.logits[i])
        assert one.decision_times[0] == forced.decision_times[i]
