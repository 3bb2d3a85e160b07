"""Train, convert and calibrate one network by a recipe: what ``powersave train`` runs.

The recipes (:class:`Recipe`, variants ``plain``, ``sparse``, ``critical``) are the criticality
experiment's; any data set of :mod:`powersave.data` works, the models adapt to its shape.
The trained weights can be kept as a checkpoint: a safetensors file of the ``state_dict`` with
the recipe in its metadata, never a pickle.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from powersave._atomic import write_bytes_atomic
from powersave.frontend.train import mlp, small_cnn

if TYPE_CHECKING:
    from powersave.data import Splits
    from powersave.network import Network

MODELS = ("mlp", "cnn")
VARIANTS = ("plain", "sparse", "critical")


def build_model(name: str, sample_shape: tuple[int, ...], classes: int, *, seed: int) -> nn.Module:
    """``mlp``: ``(features, 256, 256, classes)``; ``cnn``: :func:`small_cnn` for the images.

    Args:
        name: ``"mlp"`` or ``"cnn"``.
        sample_shape: one sample's shape, e.g. ``(1, 28, 28)``; the CNN needs ``(C, S, S)`` with
            ``S`` divisible by 4.
        classes: outputs of the readout.
        seed: seeds the initialisation.
    """
    if name == "mlp":
        return mlp((int(np.prod(sample_shape)), 256, 256, classes), seed=seed)
    if name == "cnn":
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(f"the CNN takes square images (C, S, S), got samples {sample_shape}")
        return small_cnn(
            classes=classes, in_channels=sample_shape[0], image_size=sample_shape[1], seed=seed
        )
    raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")


@dataclass(frozen=True)
class Recipe:
    """How one variant is trained (numbers only; the options are built from them).

    Attributes:
        epochs: epochs in all, fine-tuning included (the same for every variant of a model).
        finetune_epochs: the last epochs, trained power-aware with the cut-offs of
            ``power_aware_mode`` calibrated on the calibration split (0: no fine-tuning).
        power_aware_mode: which calibrated mode's cut-offs are active while fine-tuning.
        activity: :class:`~powersave.frontend.sparse.ActivityPenalty` weight (0: off).
        activity_layers: its per hidden population factors ``λ_ℓ`` (None: 1 for each).
        activity_kappa: its surrogate's width.
        activity_warmup: the share of the first phase over which its weight ramps up from 0
            (fine-tuning starts at full weight).
        sparsity: :class:`~powersave.frontend.sparse.Pruning` target, one share for all layers
            or one per Linear/Conv layer (0: off).
        chi_weight: :class:`~powersave.frontend.sparse.CriticalityPenalty` weight (0: off).
        chi_target: the χ it holds each hidden layer at.
        lr, finetune_lr: Adam's learning rates (each phase decays its own along a cosine).
    """

    epochs: int
    finetune_epochs: int = 0
    power_aware_mode: str = "balanced"
    activity: float = 0.0
    activity_layers: tuple[float, ...] | None = None
    activity_kappa: float = 1.0
    activity_warmup: float = 0.0
    sparsity: float | tuple[float, ...] = 0.0
    chi_weight: float = 0.0
    chi_target: float = 1.0
    lr: float = 1e-3
    finetune_lr: float = 3e-4

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sparsity"] = list(self.sparsity) if isinstance(self.sparsity, tuple) else self.sparsity
        if self.activity_layers is not None:
            d["activity_layers"] = list(self.activity_layers)
        return d


def default_recipes(model: str, *, quick: bool = False) -> dict[str, Recipe]:
    """The recipes of the three variants for ``model`` (``"mlp"`` or ``"cnn"``).

    ``quick`` shrinks the epochs to 2 (1 of them fine-tuning): the same pipeline in seconds, for
    tests; its figures mean little.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {list(MODELS)}")
    sparse: Recipe
    if model == "mlp":
        # The readout's weights cost little (a hidden spike reaches 10 of them): prune it less.
        sparse = Recipe(epochs=45, finetune_epochs=5, activity=0.4, sparsity=(0.9, 0.9, 0.5))
    else:
        # conv1 has only 200 weights and an untrained CNN is silenced for good by a
        # full-strength activity penalty: prune conv1 lightly, ramp the penalty up. The
        # per-layer factors are about proportional to the populations' sizes (6272, 3136, 64
        # neurons), so that the penalty counts spikes, not shares: conv1 and conv2 send almost
        # all of them, and silencing the 64-neuron dense layer would cost accuracy for nothing.
        # Pruning is kept moderate: operations stay far below 10 % of dense, accuracy matters more.
        sparse = Recipe(
            epochs=30,
            finetune_epochs=3,
            activity=0.3,
            activity_layers=(6.0, 3.0, 0.05),
            activity_kappa=0.5,
            activity_warmup=0.5,
            sparsity=(0.3, 0.5, 0.75, 0.3),
        )
    if quick:
        sparse = replace(sparse, epochs=2, finetune_epochs=1)
    return {
        "plain": Recipe(epochs=sparse.epochs),
        "sparse": sparse,
        "critical": replace(sparse, chi_weight=0.1, chi_target=1.0),
    }


def convert_and_calibrate(
    model: Any, data: Splits, progress: bool, quick: bool = False
) -> tuple[Network, dict]:
    """Convert ``model`` with scales at :data:`~powersave.api.SCALE_PERCENTILE` of the calibration
    split and calibrate its modes there; the network and the calibration's records per mode.
    ``quick`` calibrates with coarse cut-off steps (0.25 down to 0.125), for tests."""
    from powersave.api import SCALE_PERCENTILE, convert
    from powersave.power.calibrate import calibrate

    network = convert(model, data.calibration.x, percentile=SCALE_PERCENTILE)
    steps: dict[str, Any] = {"start_step": 0.25, "min_step": 0.125} if quick else {}
    calibration = calibrate(
        network,
        data.calibration.x,
        data.calibration.y,
        progress=progress,
        **steps,
    )
    return calibration.network, calibration.modes


def train_variant(
    model_name: str,
    recipe: Recipe,
    data: Splits,
    *,
    seed: int,
    threads: int | None = 1,
    progress: bool = False,
    quick: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train one network by ``recipe`` on ``data.train``; returns the model and what was done.

    A power-aware recipe converts and calibrates the network on ``data.calibration`` after its
    first phase, to take the cut-offs of ``recipe.power_aware_mode``; nothing sees the test split.
    """
    from powersave.frontend import train_classifier
    from powersave.frontend.sparse import (
        ActivityPenalty,
        CriticalityPenalty,
        PowerAware,
        Pruning,
        weight_sparsity,
    )

    classes = int(max(data.train.y.max(), data.test.y.max())) + 1
    model = build_model(model_name, tuple(data.train.x.shape[1:]), classes, seed=seed)
    activity, steady = None, None
    if recipe.activity > 0:
        steady = ActivityPenalty(
            weight=recipe.activity, kappa=recipe.activity_kappa, layers=recipe.activity_layers
        )
        activity = replace(steady, warmup=recipe.activity_warmup)  # fine-tuning: `steady`
    pruned = recipe.sparsity if isinstance(recipe.sparsity, tuple) else recipe.sparsity > 0
    pruning = Pruning(sparsity=recipe.sparsity) if pruned else None
    criticality = (
        CriticalityPenalty(target=recipe.chi_target, weight=recipe.chi_weight)
        if recipe.chi_weight > 0
        else None
    )
    first = recipe.epochs - recipe.finetune_epochs
    common: dict[str, Any] = {"threads": threads, "progress": progress, "lr_decay": True}
    start = time.perf_counter()
    train_classifier(
        model,
        data.train.x,
        data.train.y,
        epochs=first,
        seed=seed,
        lr=recipe.lr,
        activity=activity,
        pruning=pruning,
        criticality=criticality,
        **common,
    )
    thresholds = None
    if recipe.finetune_epochs > 0:
        network, _ = convert_and_calibrate(model, data, progress, quick)
        power_aware = PowerAware.from_network(network, recipe.power_aware_mode)
        thresholds = list(power_aware.thresholds)
        keep = Pruning(sparsity=pruning.sparsity, start=0.0, end=0.0) if pruning else None
        train_classifier(
            model,
            data.train.x,
            data.train.y,
            epochs=recipe.finetune_epochs,
            seed=seed + 1,
            lr=recipe.finetune_lr,
            activity=steady,
            pruning=keep,
            power_aware=power_aware,
            criticality=criticality,
            **common,
        )
    info = {
        "recipe": recipe.to_dict(),
        "training_seconds": time.perf_counter() - start,
        "power_aware_thresholds": thresholds,
        "weight_sparsity": weight_sparsity(model),
    }
    return model, info


@dataclass(frozen=True)
class Trained:
    """What :func:`train_network` returns.

    Attributes:
        model: the trained PyTorch model (eval mode).
        network: it converted, with its modes calibrated on the calibration split.
        info: the recipe, training time, power-aware thresholds, weight sparsity, and the
            PyTorch model's accuracy on the test split (``dense_accuracy``).
    """

    model: nn.Module
    network: Network
    info: dict[str, Any]


def train_network(
    data: Splits,
    *,
    model: str = "mlp",
    variant: str = "plain",
    recipe: Recipe | None = None,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Trained:
    """Train ``model`` by ``recipe`` (default: the experiment's recipe for ``variant``).

    Trains on ``data.train``, converts with scales at the 99.9th percentile of the calibration
    split and calibrates ``balanced``/``saver``/``ultra`` there; the test split is used only for
    the reported ``dense_accuracy``. With ``checkpoint``, the weights are written there too.
    """
    from powersave.frontend.train import evaluate_accuracy

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    chosen = recipe or default_recipes(model)[variant]
    trained, info = train_variant(
        model, chosen, data, seed=seed, threads=threads, progress=progress
    )
    info["dense_accuracy"] = evaluate_accuracy(trained, data.test.x, data.test.y)
    network, _ = convert_and_calibrate(trained, data, progress)
    if checkpoint is not None:
        save_checkpoint(trained, checkpoint, {"model": model, "variant": variant, **info})
    return Trained(trained, network, info)


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> None:
    """Write ``model.state_dict()`` as safetensors (atomically), ``metadata`` as JSON inside."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    header = {"format": "powersave-checkpoint", "info": json.dumps(metadata or {})}
    write_bytes_atomic(path, save(tensors, metadata=header))


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load weights written by :func:`save_checkpoint` into ``model``; return the metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(os.fspath(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != "powersave-checkpoint":
        raise ValueError(f"{os.fspath(path)} is not a powersave checkpoint")
    model.load_state_dict(load_file(os.fspath(path)))
    return dict(json.loads(header.get("info", "{}")))
