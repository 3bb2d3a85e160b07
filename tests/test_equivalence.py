"""Full power equals the PyTorch network it came from; the two engines agree with each other."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import powersave
from powersave.engine.reference import simulate
from powersave.plan import Plan


def random_mlp(seed: int, sizes: list[int]) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def random_cnn(seed: int, channels: int, pool: str) -> nn.Sequential:
    torch.manual_seed(seed)
    pooling = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        pooling,
        nn.Conv2d(channels, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
    ).eval()


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def check_full_power(model: nn.Module, x: np.ndarray) -> powersave.Run:
    """Convert with max scales on ``x`` and compare full power on the same ``x``."""
    net = powersave.convert(model, x)
    run = net.run(x)
    assert run.stats.spikes[0] > 0
    # A randomly drawn layer can be dead on every sample: nothing to compare, draw again.
    assume(all(s > 0 for s in run.stats.spikes[1:]))
    assert all(s == 0 for s in run.stats.saturated), "max scales: nothing may clip"
    expected = torch_logits(model, x)
    # float32: the engine sums in another order than torch; tolerance relative to the logits.
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(run.logits, expected, rtol=1e-4, atol=tol)
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol  # ties within rounding may break either way
    np.testing.assert_array_equal(run.predictions[clear], expected.argmax(1)[clear])
    return run


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    hidden=st.lists(st.integers(4, 48), min_size=1, max_size=3),
    signed=st.booleans(),
)
def test_random_mlps_full_power_equals_pytorch(seed: int, hidden: list[int], signed: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random((64, 12)).astype(np.float32)
    if signed:
        x = x * 2 - 1
    run = check_full_power(random_mlp(seed, [12, *hidden, 4]), x)
    assert run.stats.synaptic_ops == run.stats.zero_skip_ops  # full power skips only zeros


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), channels=st.integers(1, 6), pool=st.sampled_from(["max", "avg"]))
def test_random_cnns_full_power_equals_pytorch(seed: int, channels: int, pool: str) -> None:
    model = random_cnn(seed, channels, pool)
    with torch.no_grad():  # non-trivial batch-norm statistics, folded by the converter
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    x = np.random.default_rng(seed).random((32, 1, 8, 8)).astype(np.float32)
    check_full_power(model, x)


def test_clipping_error_is_measured_with_percentile_scales() -> None:
    model = random_mlp(3, [12, 32, 4])
    x = np.random.default_rng(3).random((200, 12)).astype(np.float32)
    net = powersave.convert(model, x, percentile=90)
    with pytest.warns(powersave.InputRangeWarning):  # the input's top 10 % clip too
        run = net.run(x)
    assert run.stats.saturated[1] > 0  # the top 10 % of positive activations clip
    exact = powersave.convert(model, x).run(x)
    assert np.abs(run.logits - exact.logits).max() > 1e-3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), cutoff=st.sampled_from([1.0, 0.7, 0.4]))
def test_reference_simulator_and_event_engine_agree(seed: int, cutoff: float) -> None:
    rng = np.random.default_rng(seed)
    model = random_cnn(seed, 3, "max" if seed % 2 else "avg")
    x = rng.random((16, 1, 8, 8)).astype(np.float32)
    net = powersave.convert(model, x)
    plan = Plan(cutoffs=(cutoff,) * net.graph.n_windows)
    dt = 1e-3
    reference = simulate(net.graph, x, dt=dt, plan=plan)
    event = net.run(x, plan, record_spikes=True)
    assert event.times is not None
    assert np.isfinite(event.times[0]).any()
    assume(all(np.isfinite(t).any() for t in event.times))  # a dead random layer: draw again
    for ref_t, ev_t in zip(reference.times, event.times, strict=True):
        both = np.isfinite(ref_t) & np.isfinite(ev_t)
        # A spike right at a cut-off may fall either side of it by float rounding.
        edge = np.isfinite(ref_t) != np.isfinite(ev_t)
        assert edge.mean() < 0.02
        assert np.abs(ref_t[both] - ev_t[both]).max(initial=0.0) <= dt
    np.testing.assert_allclose(reference.logits, event.logits, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(reference.predictions, event.predictions)


def test_mnist_mlp_reference_and_event_agree_on_real_digits() -> None:
    from powersave.data import load_mnist10k

    data = load_mnist10k()
    model = random_mlp(0, [784, 32, 10])
    net = powersave.convert(model, data.calibration.x[:200])
    x = data.test.x[:5]
    reference = simulate(net.graph, x, dt=1e-3)
    event = net.run(x, record_spikes=True)
    assert event.times is not None and np.isfinite(event.times[1]).any()
    np.testing.assert_array_equal(reference.predictions, event.predictions)
    for ref_t, ev_t in zip(reference.times, event.times, strict=True):
        np.testing.assert_array_equal(np.isfinite(ref_t), np.isfinite(ev_t))
        finite = np.isfinite(ev_t)
        assert np.abs(ref_t[finite] - ev_t[finite]).max() <= 1e-3


@pytest.mark.parametrize("mode", ["full"])
def test_save_load_keeps_answers(tmp_path: object, mode: str) -> None:
    model = random_mlp(5, [12, 16, 3])
    x = np.random.default_rng(5).random((20, 12)).astype(np.float32)
    net = powersave.convert(model, x)
    path = f"{tmp_path}/net.safetensors"
    powersave.save(net, path)
    again = powersave.load(path)
    np.testing.assert_array_equal(again.run(x, mode).logits, net.run(x, mode).logits)
