"""Training options: activity penalty, pruning, power-aware and quantization-aware training, χ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from powersave.api import convert
from powersave.coding import decode, encode, quantize_times
from powersave.engine.event import graph_costs
from powersave.frontend import mlp, small_cnn
from powersave.frontend import train_classifier as _train
from powersave.frontend._chain import chain_ops
from powersave.frontend.sparse import (
    ActivityPenalty,
    CriticalityPenalty,
    PowerAware,
    Pruning,
    Quantization,
    _apply,
    chain_forward,
    weight_sparsity,
)
from powersave.plan import Plan


@pytest.fixture(autouse=True)
def one_thread():
    """Two torch threads on a small, shared machine spin: one is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, **options) -> nn.Module:
    """One torch thread: far faster on a small shared machine, and deterministic."""
    return _train(model, x, y, threads=1, **options)


def blobs(seed: int, n: int = 300, features: int = 12, classes: int = 3):
    """Gaussian blobs in [0, 1]: easy to learn in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = rng.random((classes, features))
    y = rng.integers(0, classes, n)
    x = np.clip(centres[y] + 0.15 * rng.standard_normal((n, features)), 0, 1)
    return x.astype(np.float32), y.astype(np.int64)


def active_share(model: nn.Module, x: np.ndarray) -> float:
    """Share of hidden ReLU outputs > 0 (the spikes of the converted network)."""
    with torch.no_grad():
        out = chain_forward(chain_ops(model), torch.from_numpy(x))
    return float(np.mean([(h > 0).float().mean().item() for h in out.hidden]))


def test_options_off_train_exactly_as_before() -> None:
    x, y = blobs(0)
    a, b = mlp((12, 8, 3), seed=1), mlp((12, 8, 3), seed=1)
    train_classifier(a, x, y, epochs=2, progress=False)
    train_classifier(
        b, x, y, epochs=2, progress=False, activity=None, pruning=None, power_aware=None
    )
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_chain_forward_equals_the_model() -> None:
    torch.manual_seed(0)
    model = small_cnn((2, 3), 5, 4, image_size=8, seed=3)
    x = torch.rand(6, 1, 8, 8)
    out = chain_forward(chain_ops(model), x)
    assert torch.allclose(out.logits, model(x), atol=1e-6)
    assert [tuple(h.shape[1:]) for h in out.hidden] == [(2, 8, 8), (3, 4, 4), (5,)]


def test_pruning_schedule_and_exact_zeros() -> None:
    p = Pruning(sparsity=0.8, start=0.2, end=0.6)
    assert p.level(0, 100) == 0.0 and p.level(19, 100) == 0.0
    assert 0 < p.level(30, 100) < p.level(50, 100) < 1.0
    assert p.level(60, 100) == 1.0 and p.level(100, 100) == 1.0
    x, y = blobs(1)
    model = mlp((12, 16, 16, 3), seed=0)
    train_classifier(
        model, x, y, epochs=3, progress=False, pruning=Pruning(sparsity=(0.75, 0.5, 0.25))
    )
    shares = [row["zero_share"] for row in weight_sparsity(model)]
    assert shares == pytest.approx([0.75, 0.5, 0.25], abs=0.01)
    # The converted network counts only the surviving synapses.
    net = convert(model, x)
    fanouts = [int(c.fanout.sum()) for c in graph_costs(net.graph)]
    assert fanouts == [int((m.weight != 0).sum()) for m in model if isinstance(m, nn.Linear)]


def test_fine_tuning_keeps_the_pruned_weights_at_zero() -> None:
    x, y = blobs(2)
    model = mlp((12, 16, 3), seed=0)
    train_classifier(model, x, y, epochs=2, progress=False, pruning=Pruning(0.6, end=0.5))
    zeros = [m.weight.detach() == 0 for m in model if isinstance(m, nn.Linear)]
    train_classifier(
        model, x, y, epochs=2, seed=5, progress=False, pruning=Pruning(0.6, start=0, end=0)
    )
    after = [m.weight.detach() == 0 for m in model if isinstance(m, nn.Linear)]
    assert all(torch.equal(a, b) for a, b in zip(zeros, after, strict=True))


def test_activity_penalty_silences_neurons() -> None:
    x, y = blobs(3)
    plain, sparse = mlp((12, 32, 32, 3), seed=0), mlp((12, 32, 32, 3), seed=0)
    train_classifier(plain, x, y, epochs=6, progress=False)
    train_classifier(sparse, x, y, epochs=6, progress=False, activity=ActivityPenalty(5.0))
    assert active_share(sparse, x) < 0.7 * active_share(plain, x)
    with pytest.raises(ValueError, match="kappa"):
        ActivityPenalty(kappa=0)
    with pytest.raises(ValueError, match="hidden ReLU"):
        train_classifier(
            nn.Linear(12, 3), x, y, epochs=1, progress=False, activity=ActivityPenalty()
        )


def test_power_aware_forward_is_the_modes_network_with_identity_gradient() -> None:
    x, _ = blobs(4, n=64)
    model = mlp((12, 10, 8, 3), seed=2)
    net = convert(model, x)  # scales at the max: nothing is clipped on x
    plan = Plan(cutoffs=(0.6, 0.5, 0.7))
    power = PowerAware.from_network(net, plan)
    pops = net.graph.populations
    assert power.thresholds == pytest.approx(
        [(1 - c) * p.scale for c, p in zip(plan.cutoffs, pops, strict=True)]
    )
    tx = torch.from_numpy(x).requires_grad_(True)
    out = chain_forward(chain_ops(model), tx, power_aware=power)
    engine = net.run(x, plan).logits
    np.testing.assert_allclose(out.logits.detach().numpy(), engine, rtol=1e-4, atol=1e-4)
    # Straight-through: the input gradient is that of the uncut network only through the
    # identity at each cut (the cut itself passes gradient as if nothing were dropped).
    out.logits.sum().backward()
    assert tx.grad is not None and torch.isfinite(tx.grad).all()
    assert (tx.grad[tx.detach() < power.thresholds[0]] != 0).any()


def test_quantization_matches_the_time_code() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((5, 7)).astype(np.float32) * 2.5 - 0.5
    q = Quantization(bits=3, scales=(2.0,))
    got = q.apply(torch.from_numpy(a), 0).numpy()
    want = decode(quantize_times(encode(a, 2.0, 0), 3, 0), 2.0, 0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    x, y = blobs(5)
    model = mlp((12, 8, 3), seed=0)
    net = convert(model, x)
    train_classifier(
        model, x, y, epochs=1, progress=False, quantization=Quantization.from_network(net, 4)
    )
    with pytest.raises(ValueError, match="bits"):
        Quantization(bits=0, scales=(1.0,))


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_chi_probe_estimate_matches_the_exact_jacobian(which: str) -> None:
    torch.manual_seed(0)
    if which == "mlp":
        model, x = mlp((12, 9, 7, 4), seed=1), torch.rand(16, 12)
    else:
        model, x = small_cnn((2, 3), 5, 4, image_size=8, seed=2), torch.rand(6, 1, 8, 8)
    ops = chain_ops(model)
    blocks: list[list] = [[]]
    for op in ops:
        blocks[-1].append(op)
        if op.kind == "relu":
            blocks.append([])
    exact, h = [], x
    for block in blocks:

        def f(t: torch.Tensor, block: list = block) -> torch.Tensor:
            for op in block:
                t = _apply(op, t)
            return t

        per_sample = [
            (torch.autograd.functional.jacobian(lambda t: f(t[None])[0], s) ** 2).sum().item()
            / s.numel()
            for s in h
        ]
        exact.append(np.mean(per_sample))
        with torch.no_grad():
            h = f(h)
    with torch.no_grad():
        repeats = (6400 // len(x), *([1] * (x.dim() - 1)))
        est = [c.item() for c in chain_forward(ops, x.repeat(repeats), chi=True).chi]
    np.testing.assert_allclose(est, exact, rtol=0.1)


def test_criticality_penalty_pulls_chi_to_target() -> None:
    x, y = blobs(6)
    model = mlp((12, 24, 24, 3), seed=0)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.3)  # start deep in the ordered phase, χ << 1
    ops = chain_ops(model)

    def hidden_chi() -> np.ndarray:
        torch.manual_seed(1)
        with torch.no_grad():
            out = chain_forward(ops, torch.from_numpy(x).repeat(4, 1), chi=True)
        return np.array([c.item() for c in out.chi[:-1]])

    before = hidden_chi()
    train_classifier(
        model,
        x,
        y,
        epochs=10,
        batch_size=32,
        lr=1e-2,
        progress=False,
        criticality=CriticalityPenalty(1.0, weight=1.0),
    )
    after = hidden_chi()
    assert np.all(np.abs(np.log(after)) < np.abs(np.log(before)))
    assert np.all(np.abs(np.log(after)) < 0.5)


def test_train_network_and_checkpoints(tmp_path) -> None:
    from powersave.data import Dataset, Splits, load_mnist10k
    from powersave.frontend.pipeline import Recipe, build_model, load_checkpoint, train_network

    full = load_mnist10k()
    data = Splits(
        *(
            Dataset(d.x[:n], d.y[:n], d.name)
            for d, n in zip((full.train, full.calibration, full.test), (300, 100, 100), strict=True)
        )
    )
    recipe = Recipe(epochs=2, finetune_epochs=1, activity=0.1, sparsity=0.5)
    path = tmp_path / "model.safetensors"
    trained = train_network(
        data, variant="sparse", recipe=recipe, progress=False, checkpoint=path, seed=3
    )
    assert {"balanced", "saver", "ultra"} <= set(trained.network.modes)
    assert 0 <= trained.info["dense_accuracy"] <= 1
    assert [r["zero_share"] for r in trained.info["weight_sparsity"]] == pytest.approx(
        [0.5] * 3, abs=0.01
    )
    fresh = build_model("mlp", (1, 28, 28), 10, seed=99)
    info = load_checkpoint(fresh, path)
    assert info["variant"] == "sparse" and info["recipe"]["epochs"] == 2
    for p, q in zip(fresh.parameters(), trained.model.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("rnn", (4,), 2, seed=0)
