"""Small ReLU networks and a plain, seeded training loop for them (Adam, cross-entropy).

Nothing here touches global state for longer than a call: initialisation and dropout draw from
a forked RNG seeded by the caller, shuffling from a ``torch.Generator``, and the thread count is
set only when asked (and restored afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from powersave.frontend.sparse import (
        ActivityPenalty,
        CriticalityPenalty,
        PowerAware,
        Pruning,
        Quantization,
    )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global RNG seeded with ``seed``, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mlp(sizes: Sequence[int] = (784, 256, 256, 10), *, seed: int = 0) -> nn.Sequential:
    """``Flatten, Linear, ReLU, ..., Linear``: a multilayer perceptron.

    Args:
        sizes: ``(inputs, hidden..., classes)``; at least two entries. Inputs of any shape
            ``(N, *shape)`` with ``prod(shape) == sizes[0]`` are flattened first.
        seed: seeds the weight initialisation (global RNG state is left as it was).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes needs at least two positive entries, got {sizes}")
    layers: list[nn.Module] = [nn.Flatten()]
    with _seeded(seed):
        for i, (n_in, n_out) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def small_cnn(
    channels: tuple[int, int] = (8, 16),
    hidden: int = 64,
    classes: int = 10,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    seed: int = 0,
) -> nn.Sequential:
    """A small CNN for 28×28 digits, fast to train on a CPU.

    ``Conv(in, c1, 5, pad 2) → ReLU → MaxPool 2 → Conv(c1, c2, 5, pad 2) → ReLU → MaxPool 2 →
    Flatten → Linear(c2·7·7, hidden) → ReLU → Linear(hidden, classes)``; takes
    ``(N, in_channels, image_size, image_size)`` with ``image_size`` divisible by 4.
    """
    if image_size % 4:
        raise ValueError(f"image_size must be divisible by 4, got {image_size}")
    c1, c2 = channels
    side = image_size // 4
    with _seeded(seed):
        return nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),  # (N, c1, S, S)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, c1, S/2, S/2)
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, c2, S/4, S/4)
            nn.Flatten(),  # (N, c2·S/4·S/4)
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),  # (N, classes): the readout
        )


def _tensors(x: np.ndarray, y: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = np.asarray(x)
    if inputs.dtype.kind not in "iuf":
        raise TypeError(f"x must be real numbers, got dtype {inputs.dtype}")
    if inputs.ndim < 2 or len(inputs) == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {inputs.shape}")
    # A copy: torch warns on (and must not write to) read-only arrays such as the bundled data.
    tx = torch.from_numpy(np.array(inputs, dtype=np.float32, copy=True))
    if y is None:
        return tx, torch.empty(0, dtype=torch.long)
    labels = np.asarray(y)
    if labels.dtype.kind not in "iu" or labels.shape != (len(inputs),):
        raise ValueError(
            f"y must be integer labels of shape ({len(inputs)},), got dtype {labels.dtype} "
            f"and shape {labels.shape}"
        )
    return tx, torch.from_numpy(labels.astype(np.int64))


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 0.0,
    threads: int | None = None,
    activity: ActivityPenalty | None = None,
    pruning: Pruning | None = None,
    power_aware: PowerAware | None = None,
    quantization: Quantization | None = None,
    criticality: CriticalityPenalty | None = None,
    lr_decay: bool = False,
) -> nn.Module:
    """Train ``model`` in place (Adam, cross-entropy of its logits); return it in eval mode.

    The options after ``threads`` are off by default; each is described, with what it adds to
    the loss, in :mod:`powersave.frontend.sparse` (``docs/training.md`` has the recipes). With
    any of them on, the model is run as the chain of ops the converter reads, without dropout.

    Args:
        model: maps ``(B, *x.shape[1:])`` float32 to logits ``(B, classes)``.
        x: inputs ``(N, ...)``, e.g. ``(N, 1, 28, 28)`` or ``(N, 784)`` in ``[0, 1]``.
        y: integer labels ``(N,)`` in ``[0, classes)``.
        epochs: passes over the data, reshuffled each time.
        batch_size: samples per Adam step (the last batch may be smaller).
        lr, weight_decay: Adam's learning rate and L2 weight decay.
        seed: seeds the shuffling and any randomness inside the model (dropout): the same
            model, data and seed give the same weights.
        progress: show a tqdm progress bar (one tick per batch, with the running loss).
        threads: torch CPU threads to use during training; None leaves torch's setting alone.
        activity: penalise a differentiable count of hidden spikes (:class:`ActivityPenalty`).
        pruning: gradual magnitude pruning to exact zeros (:class:`Pruning`).
        power_aware: a mode's cut-offs active in the forward pass, straight-through
            (:class:`PowerAware`).
        quantization: b-bit spike times in the forward pass, straight-through
            (:class:`Quantization`).
        criticality: hold each hidden layer's gain χ near a target (:class:`CriticalityPenalty`).
        lr_decay: anneal the learning rate to 0 along a cosine over the run.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    tx, ty = _tensors(x, y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n_batches = -(-len(tx) // batch_size)
    total_steps = epochs * n_batches
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
        if lr_decay
        else None
    )
    runner = None
    if any(o is not None for o in (activity, pruning, power_aware, quantization, criticality)):
        from powersave.frontend.sparse import OptionsRunner, TrainingOptions

        options = TrainingOptions(activity, pruning, power_aware, quantization, criticality)
        runner = OptionsRunner(model, options, total_steps)
        signed = bool((tx < 0).any())
    model.train()
    with (
        _threads(threads),
        _seeded(seed),
        tqdm(total=total_steps, disable=not progress, desc="train", unit="batch") as bar,
    ):
        if runner is not None:
            runner.after_step(0)
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(len(tx), generator=generator)
            total = 0.0
            for b in range(n_batches):
                index = order[b * batch_size : (b + 1) * batch_size]
                optimizer.zero_grad(set_to_none=True)
                if runner is None:
                    loss = loss_fn(model(tx[index]), ty[index])
                else:
                    loss, _ = runner.loss(tx[index], ty[index], signed)
                loss.backward()
                optimizer.step()
                step += 1
                if scheduler is not None:
                    scheduler.step()
                if runner is not None:
                    runner.after_step(step)
                total += float(loss.detach())
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / (b + 1):.4f}", refresh=False)
    model.eval()
    return model


def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Class predictions ``(N,)`` (argmax of the logits), in eval mode; the mode is restored."""
    tx, _ = _tensors(x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            chunks = [
                model(tx[i : i + batch_size]).argmax(dim=1) for i in range(0, len(tx), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def evaluate_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples of ``x`` ``(N, ...)`` whose predicted class equals ``y`` ``(N,)``."""
    _, ty = _tensors(x, y)
    return float((predict(model, x) == ty.numpy()).mean())
