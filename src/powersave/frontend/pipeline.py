"""Train, convert and calibrate one network by a recipe: what ``powersave train`` runs.

The recipes (:class:`powersave.experiment.Recipe`, variants ``plain``, ``sparse``, ``critical``)
are the experiment's; any data set of :mod:`powersave.data` works, the models adapt to its shape.
The trained weights can be kept as a checkpoint: a safetensors file of the ``state_dict`` with
the recipe in its metadata, never a pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from powersave._atomic import write_bytes_atomic
from powersave.frontend.train import mlp, small_cnn

if TYPE_CHECKING:
    from powersave.data import Splits
    from powersave.experiment import Recipe
    from powersave.network import Network

MODELS = ("mlp", "cnn")


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
    from powersave.experiment import (
        VARIANTS,
        _convert_calibrate,
        default_recipes,
        train_variant,
    )
    from powersave.frontend.train import evaluate_accuracy

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    chosen = recipe or default_recipes(model)[variant]
    trained, info = train_variant(
        model, chosen, data, seed=seed, threads=threads, progress=progress
    )
    info["dense_accuracy"] = evaluate_accuracy(trained, data.test.x, data.test.y)
    network, _ = _convert_calibrate(trained, data, progress)
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
