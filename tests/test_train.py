"""Training helpers: models, a seeded training loop, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from powersave.engine.dense import forward
from powersave.frontend import convert_to_graph, evaluate_accuracy, mlp, small_cnn
from powersave.frontend import train_classifier as train


def separable(seed: int, n: int = 256, features: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Two classes split by a random hyperplane, inputs in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, features), dtype=np.float32)
    normal = rng.standard_normal(features)
    y = ((x - 0.5) @ normal > 0).astype(np.int64)
    return x, y


def test_models_have_the_documented_layers() -> None:
    model = mlp((6, 5, 4, 3))
    assert [type(m) for m in model] == [
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    assert model(torch.zeros(2, 6)).shape == (2, 3)
    cnn = small_cnn()
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert small_cnn((2, 3), 4, 5, in_channels=3, image_size=8)(torch.zeros(1, 3, 8, 8)).shape == (
        1,
        5,
    )
    with pytest.raises(ValueError, match="at least two"):
        mlp((4,))
    with pytest.raises(ValueError, match="divisible by 4"):
        small_cnn(image_size=30)


def test_model_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = mlp((4, 3, 2), seed=1), mlp((4, 3, 2), seed=1), mlp((4, 3, 2), seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[1].weight, b[1].weight)
    assert not torch.equal(a[1].weight, c[1].weight)


def test_training_improves_accuracy_and_converts() -> None:
    x, y = separable(0)
    model = mlp((10, 16, 2), seed=0)
    before = evaluate_accuracy(model, x, y)
    train(model, x, y, epochs=30, batch_size=32, lr=1e-2, progress=False)
    after = evaluate_accuracy(model, x, y)
    assert after >= 0.95 and after > before
    assert not model.training
    graph = convert_to_graph(model, x)
    assert (forward(graph, x).logits.argmax(1) == y).mean() == pytest.approx(after)


def test_same_seed_gives_identical_weights() -> None:
    x, y = separable(1, n=100)

    def trained(seed: int) -> nn.Module:
        base = mlp((10, 8, 2), seed=0)  # the same start for every run
        model = nn.Sequential(*base[:3], nn.Dropout(0.3), base[3])  # dropout draws randomness
        return train(model, x, y, epochs=3, batch_size=16, seed=seed, progress=False)

    state = torch.get_rng_state()
    first, second, other = trained(0), trained(0), trained(1)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(
        not torch.equal(p, q) for p, q in zip(first.parameters(), other.parameters(), strict=True)
    )


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = separable(2, n=40)
    train(mlp((10, 4, 2)), x, y, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    train(mlp((10, 4, 2)), x, y, epochs=1, progress=True)
    assert "train" in capsys.readouterr().err


def test_threads_restored_and_eval_mode_restored() -> None:
    x, y = separable(3, n=40)
    threads = torch.get_num_threads()
    model = train(mlp((10, 4, 2)), x, y, epochs=1, progress=False, threads=1)
    assert torch.get_num_threads() == threads
    model.train()
    evaluate_accuracy(model, x, y)
    assert model.training


def test_cnn_trains_on_images() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 64)
    x = rng.random((64, 1, 8, 8), dtype=np.float32) * 0.2
    x[y == 1, :, :4] += 0.8  # class 1: bright top half
    model = small_cnn((2, 4), 8, 2, image_size=8)
    train(model, x, y, epochs=15, batch_size=16, lr=1e-2, progress=False)
    assert evaluate_accuracy(model, x, y) >= 0.95


def test_bad_training_data() -> None:
    x, y = separable(5, n=10)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(10,\)"):
        train(mlp((10, 2)), x, y[:5], progress=False)
    with pytest.raises(ValueError, match="y must be integer labels"):
        train(mlp((10, 2)), x, y.astype(np.float32), progress=False)
    with pytest.raises(ValueError, match="non-empty batch"):
        evaluate_accuracy(mlp((10, 2)), x[:0], y[:0])
