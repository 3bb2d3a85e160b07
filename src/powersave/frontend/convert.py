"""Compile a ReLU network trained in PyTorch into a powersave :class:`~powersave.graph.Graph`.

The model is read as a chain of ops (:mod:`powersave.frontend._chain`), the ops are laid out as
graph nodes (BatchNorm folded, MaxPool moved after its ReLU, ON/OFF weights for signed inputs),
and each spiking population's scale ``A_ℓ`` is calibrated on data with the dense pass
(:func:`powersave.engine.dense.forward`). Before returning, the graph's logits are checked
against the model's own on the calibration inputs, so a model read wrongly is refused rather
than silently changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from powersave.engine.dense import forward
from powersave.errors import ConversionError
from powersave.frontend._chain import Op, as_pair, chain_ops
from powersave.graph import AvgPool, Conv, Dense, Flatten, Graph, Input, MaxPool
from powersave.graph.nodes import Node

#: Samples per chunk when running the calibration data (bounds memory of the dense pass).
_CHUNK = 256

#: The graph must reproduce the model's logits to this fraction of their largest magnitude.
_CHECK_RTOL = 1e-3

INPUT_NAME = "input"


def convert_to_graph(
    model: nn.Module,
    calibration_inputs: np.ndarray | torch.Tensor,
    *,
    percentile: float | None = None,
    signed: bool | None = None,
) -> Graph:
    """Compile ``model`` into a time-to-first-spike graph, with scales calibrated on data.

    Args:
        model: a ReLU network: an ``nn.Sequential`` (nested ones flattened) or a module that
            ``torch.fx`` traces into a chain of Linear, Conv2d, ReLU, BatchNorm1d/2d (folded
            into the preceding Linear/Conv), AvgPool2d, MaxPool2d, Flatten, Dropout, Identity.
            Every Linear/Conv followed by a ReLU is a hidden layer; the last one, without a
            ReLU, is the readout whose potentials are the logits. The model is not modified
            (a copy is put in eval mode).
        calibration_inputs: ``(N, features)`` or ``(N, channels, height, width)``, N >= 1, real
            and finite; numpy or torch. ``shape[1:]`` becomes the graph's input shape.
        percentile: None (default) sets each scale ``A_ℓ`` to the population's largest
            activation on the calibration inputs, so nothing is clipped there; ``p`` in
            ``(0, 100]`` sets it to the p-th percentile of the population's *positive*
            activations (larger values then saturate). A population that never fires gets 1.
        signed: whether the input is split into ON and OFF channels ``[relu(x), relu(-x)]``
            (the first Linear/Conv then gets weights ``[W, -W]``); None decides from the data
            (signed iff some calibration input is negative).

    Returns:
        The graph, with node names taken from the module paths (``"features.0"`` →
        ``"features_0"``) and the input named ``"input"``.

    Raises:
        ConversionError: a layer or structure the time code cannot carry; the message names
            the module (``"layers.3 (GELU)"``) and says why.
        TypeError: calibration inputs that are not real numbers.
        ValueError: calibration inputs that are empty, not finite, or of a shape the model
            cannot take; a bad ``percentile``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_percentile(percentile)
    x = _as_batch(calibration_inputs)
    is_signed = _resolve_signed(x, signed)
    # Work on a float32 CPU copy in eval mode: BatchNorm uses running statistics and Dropout
    # is off, and the user's model keeps its mode, device and dtype.
    model = copy.deepcopy(model).cpu().float().eval()
    ops = chain_ops(model)
    # Structure first (what can never be converted), then shapes (what these inputs get wrong).
    nodes = _Builder(x.shape[1:], is_signed).build(ops)
    reference = _torch_logits(model, x, ops)
    graph = Graph(tuple(nodes))
    scales = _calibrate(graph, x, percentile, reference)
    return graph.with_scales(scales)


# -- inputs ------------------------------------------------------------------------------------


def _check_percentile(percentile: float | None) -> None:
    if percentile is None:
        return
    if isinstance(percentile, bool) or not isinstance(percentile, int | float | np.number):
        raise TypeError(f"percentile must be a number in (0, 100] or None, got {percentile!r}")
    if not (0 < float(percentile) <= 100):
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")


def _as_batch(inputs: Any) -> np.ndarray:
    """Calibration inputs as a float32 array ``(N, *input_shape)``, checked."""
    if isinstance(inputs, torch.Tensor):
        if inputs.is_complex():
            raise TypeError(f"calibration inputs must be real numbers, got dtype {inputs.dtype}")
        tensor = inputs.detach().cpu()
        # numpy has no bfloat16; every real floating dtype fits in float32 well enough here.
        if tensor.is_floating_point():
            tensor = tensor.float()
        array = tensor.numpy()
    else:
        array = np.asarray(inputs)
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"calibration inputs must be real numbers (integer or float), got dtype {array.dtype}"
        )
    if array.ndim not in (2, 4):
        raise ValueError(
            "calibration inputs must be a batch (N, features) or (N, channels, height, width), "
            f"got shape {array.shape}"
        )
    if array.shape[0] < 1 or min(array.shape) < 1:
        raise ValueError(f"calibration inputs must not be empty, got shape {array.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported next
        array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"calibration inputs contain {bad} NaN or infinite values (float32); "
            "they must be finite"
        )
    return array


def _resolve_signed(x: np.ndarray, signed: bool | None) -> bool:
    if signed is not None and not isinstance(signed, bool | np.bool_):
        raise TypeError(f"signed must be True, False or None, got {signed!r}")
    negative = bool((x < 0).any())
    if signed is None:
        return negative
    if not signed and negative:
        raise ConversionError(
            f"signed=False, but the calibration inputs have negative values (min {x.min():.4g}): "
            "an unsigned input population leaves them silent, which changes the answers; "
            "pass signed=True (ON/OFF channels) or signed=None"
        )
    return bool(signed)


def _torch_logits(model: nn.Module, x: np.ndarray, ops: list[Op]) -> np.ndarray:
    """The model's outputs on ``x`` as ``(N, K)`` float32; ValueError if it cannot take them."""
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), 1024):
                out = model(torch.from_numpy(np.array(x[start : start + 1024], copy=True)))
                if not isinstance(out, torch.Tensor):
                    raise ConversionError(
                        f"the model must return one tensor of logits, it returns "
                        f"{type(out).__name__}"
                    )
                outputs.append(out.reshape(out.shape[0], -1).numpy())
    except ConversionError:
        raise
    except Exception as error:  # torch raises RuntimeError, ValueError, IndexError, ...
        raise ValueError(
            f"the model cannot take calibration inputs of shape {x.shape} (one sample "
            f"{x.shape[1:]}){_expected(ops)}; torch says: {error}"
        ) from error
    return np.concatenate(outputs)


def _expected(ops: list[Op]) -> str:
    """What the model's first Linear/Conv takes, for error messages ('' if it has none)."""
    first = next((op for op in ops if op.kind in ("linear", "conv")), None)
    if first is not None and isinstance(first.module, nn.Linear):
        return f": its first layer {first.label} expects {first.module.in_features} features"
    if first is not None and isinstance(first.module, nn.Conv2d):
        channels = first.module.in_channels
        return f": its first layer {first.label} expects (channels={channels}, height, width)"
    return ""


# -- laying out the nodes ----------------------------------------------------------------------


@dataclass
class _Pending:
    """A Linear/Conv whose ReLU has not come yet: hidden if one comes, else the readout.

    ``weight``/``bias`` are float64 so that folding BatchNorm adds no rounding of its own;
    ``deferred`` holds MaxPool and Flatten ops met before the ReLU, emitted after the layer
    (``relu`` commutes with both).
    """

    op: Op
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    deferred: list[Op] = field(default_factory=list)


def _numpy64(tensor: torch.Tensor | None, default: float, size: int) -> np.ndarray:
    if tensor is None:
        return np.full(size, default, dtype=np.float64)
    return tensor.detach().cpu().double().numpy().copy()


def _pending_of(op: Op) -> _Pending:
    module = op.module
    if isinstance(module, nn.Linear):
        weight = _numpy64(module.weight, 0.0, 0)
        return _Pending(op, weight, _numpy64(module.bias, 0.0, weight.shape[0]))
    assert isinstance(module, nn.Conv2d)
    weight = _numpy64(module.weight, 0.0, 0)
    kernel = as_pair(module.kernel_size)
    if module.padding == "valid":
        padding = (0, 0)
    elif module.padding == "same":  # odd kernels only (checked), stride 1 (torch's rule)
        padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    else:
        padding = as_pair(module.padding)
    bias = _numpy64(module.bias, 0.0, weight.shape[0])
    return _Pending(op, weight, bias, as_pair(module.stride), padding)


def _fold_batchnorm(pending: _Pending, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """``bn(W a + b) = (g W) a + (b - mean) g + beta`` with ``g = gamma / sqrt(var + eps)``."""
    out = pending.weight.shape[0]
    mean = _numpy64(bn.running_mean, 0.0, out)
    var = _numpy64(bn.running_var, 1.0, out)
    gamma = _numpy64(bn.weight, 1.0, out)
    beta = _numpy64(bn.bias, 0.0, out)
    gain = gamma / np.sqrt(var + bn.eps)
    pending.weight = pending.weight * gain.reshape(-1, *([1] * (pending.weight.ndim - 1)))
    pending.bias = (pending.bias - mean) * gain + beta


class _Builder:
    """Lays out graph nodes from ops, one at a time, refusing orders the code cannot carry.

    The value flowing between ops is in one of three states: the input population; a spiking
    population (non-negative: after a ReLU or an AvgPool of one); or the pre-activation of a
    pending Linear/Conv, not yet known to be hidden (a ReLU follows) or the readout (none does).
    """

    def __init__(self, input_shape: tuple[int, ...], signed: bool) -> None:
        self.signed = signed
        self.nodes: list[Node] = [Input(INPUT_NAME, input_shape, 1.0, signed)]
        self.used_names = {INPUT_NAME}
        self.state: Literal["input", "spiking"] = "input"
        self.pending: _Pending | None = None
        self.ndim = len(input_shape)  # per-sample rank of the value, as torch sees it
        self.doubled = False  # whether the first Linear/Conv got its [W, -W] already
        self.seen: list[Op] = []

    def build(self, ops: list[Op]) -> list[Node]:
        for op in ops:
            getattr(self, f"_{op.kind}")(op)
            self.seen.append(op)
        self._finish()
        return self.nodes

    # -- one method per op kind ----------------------------------------------------------------

    def _linear(self, op: Op) -> None:
        self._refuse_two_in_a_row(op)
        if self.ndim != 1:
            raise ConversionError(
                f"{op.label}: a Linear applied to a (channels, height, width) tensor acts on "
                "its last axis only, which is not supported: add a Flatten before it"
            )
        self.pending = _pending_of(op)

    def _conv(self, op: Op) -> None:
        self._refuse_two_in_a_row(op)
        self.pending = _pending_of(op)
        self.ndim = 3

    def _batchnorm(self, op: Op) -> None:
        if self.pending is None or self.pending.deferred:
            before = self.seen[-1].label if self.seen else "the input"
            raise ConversionError(
                f"{op.label}: BatchNorm must directly follow a Linear or Conv to be folded into "
                f"it, here it follows {before}"
            )
        assert isinstance(op.module, nn.modules.batchnorm._BatchNorm)
        _fold_batchnorm(self.pending, op.module)

    def _relu(self, op: Op) -> None:
        if self.pending is not None:
            self._emit_layer(self.pending, scale=1.0)  # placeholder until calibration
            self.pending = None
            self.state = "spiking"
        elif self.state == "input" and self.signed:
            raise ConversionError(
                f"{op.label}: a ReLU on a signed input drops its negative part, which the "
                "ON/OFF split would keep; pass signed=False if the inputs are never negative"
            )
        # Otherwise the value is already non-negative (a ReLU output, or an unsigned input
        # whose negative values never spike): the ReLU changes nothing.

    def _maxpool(self, op: Op) -> None:
        if self.pending is not None:
            # max(relu(z)) == relu(max(z)): pooling before the ReLU moves after it.
            self.pending.deferred.append(op)
        elif self.state == "input" and self.signed:
            raise ConversionError(
                f"{op.label}: max pooling directly on a signed input is not supported: the max "
                "of the ON and OFF channels is not the max of the input"
            )
        else:
            self.nodes.append(self._pool_node(MaxPool, op))

    def _avgpool(self, op: Op) -> None:
        if self.pending is not None:
            raise ConversionError(
                f"{op.label}: AvgPool must come after a ReLU (it is a spiking layer that averages "
                f"spikes), here it averages the pre-activations of {self.pending.op.label}"
            )
        # On a signed input the ON and OFF channels are averaged apart, and the first layer's
        # [W, -W] recombines them: W·avg(x⁺) − W·avg(x⁻) = W·avg(x). Exact.
        self.nodes.append(self._pool_node(AvgPool, op, scale=1.0))
        self.state = "spiking"

    def _flatten(self, op: Op) -> None:
        if self.pending is not None:
            self.pending.deferred.append(op)
        elif self.ndim == 3:
            self.nodes.append(Flatten(self._name(op.name)))
        self.ndim = 1

    # -- helpers ---------------------------------------------------------------------------------

    def _refuse_two_in_a_row(self, op: Op) -> None:
        if self.pending is not None:
            raise ConversionError(
                f"{op.label}: follows {self.pending.op.label} without a ReLU in between; "
                "two linear layers in a row are not supported: add a ReLU between them or "
                "merge them into one layer"
            )

    def _name(self, qualified: str) -> str:
        """A unique node name from a module path ('.' is not allowed in node names)."""
        base = qualified.replace(".", "_").replace("/", "_") or "layer"
        name, k = base, 1
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def _pool_node(self, cls: type[MaxPool] | type[AvgPool], op: Op, **extra: Any) -> Node:
        pool = op.module
        assert isinstance(pool, nn.MaxPool2d | nn.AvgPool2d)
        kernel = as_pair(pool.kernel_size)
        stride = kernel if pool.stride is None else as_pair(pool.stride)
        return cls(self._name(op.name), kernel, stride, as_pair(pool.padding), **extra)

    def _emit_layer(self, pending: _Pending, scale: float | None) -> None:
        weight, bias = pending.weight, pending.bias
        if self.signed and not self.doubled:
            # ON channels come first (also after a flatten: ON block, then OFF block), so the
            # first synaptic layer sees [x⁺, x⁻] and W x = W x⁺ − W x⁻.
            weight = np.concatenate([weight, -weight], axis=1)
        self.doubled = True
        name = self._name(pending.op.name)
        if weight.ndim == 2:
            self.nodes.append(Dense(name, weight, bias, scale))
        else:
            self.nodes.append(Conv(name, weight, bias, pending.stride, pending.padding, scale))
        rank = weight.ndim - 1  # per-sample rank of the layer's output: 1 (Dense) or 3 (Conv)
        for op in pending.deferred:
            if op.kind == "maxpool":
                if scale is None:
                    raise ConversionError(
                        f"{op.label}: pools the potentials of the readout {pending.op.label} "
                        "(the last Linear/Conv, with no ReLU after it); only Flatten, Dropout or "
                        "Identity may follow the readout"
                    )
                self.nodes.append(self._pool_node(MaxPool, op))
            elif rank == 3:
                self.nodes.append(Flatten(self._name(op.name)))
                rank = 1

    def _finish(self) -> None:
        if self.pending is not None:
            self._emit_layer(self.pending, scale=None)
            return
        if not any(op.kind in ("linear", "conv") for op in self.seen):
            raise ConversionError(
                "the model has no Linear or Conv layer: there is nothing to compile (a readout "
                "Linear or Conv is needed)"
            )
        last = next(op for op in reversed(self.seen) if op.kind != "flatten")
        if last.kind == "relu":
            raise ConversionError(
                f"{last.label}: the model ends with a ReLU; the readout must be a Linear or Conv "
                "without a ReLU after it (its potentials are the logits): remove the final ReLU"
            )
        raise ConversionError(
            f"{last.label}: the model must end with a Linear or Conv readout (no ReLU after it), "
            f"it ends with {last.label}"
        )


# -- scales ------------------------------------------------------------------------------------


def _calibrate(
    graph: Graph, x: np.ndarray, percentile: float | None, reference: np.ndarray
) -> dict[str, float]:
    """Scale of every spiking population; checks the graph's logits against ``reference``.

    ``x`` is ``(N, *input_shape)``, ``reference`` the model's ``(N, K)`` outputs.
    """
    populations = graph.populations
    peaks = np.zeros(len(populations))
    positives: list[list[np.ndarray]] = [[] for _ in populations]
    worst, largest = 0.0, float(np.abs(reference).max(initial=0.0))
    for start in range(0, len(x), _CHUNK):
        run = forward(graph, x[start : start + _CHUNK])
        expected = reference[start : start + _CHUNK]
        if run.logits.shape != expected.shape:
            raise ConversionError(
                f"the converted graph gives logits of shape {run.logits.shape[1:]} per batch "
                f"but the model gives {expected.shape[1:]}: the model's forward does something "
                "the converter does not see (a reshape that is not a flatten?)"
            )
        worst = max(worst, float(np.abs(run.logits - expected).max(initial=0.0)))
        for k, a in enumerate(run.activations):
            peaks[k] = max(peaks[k], float(a.max(initial=0.0)))
            if percentile is not None:
                positives[k].append(a[a > 0].astype(np.float64))
    tolerance = _CHECK_RTOL * max(largest, 1e-3)
    if worst > tolerance:
        raise ConversionError(
            f"the converted graph does not reproduce the model: logits differ by up to "
            f"{worst:.3g} (tolerance {tolerance:.3g}) on the calibration inputs; the model's "
            "forward does something the converter does not see (a subclassed layer with its "
            "own forward?)"
        )
    scales = {}
    for k, population in enumerate(populations):
        if peaks[k] <= 0:
            scale = 1.0  # never fires on the calibration data: any scale codes it exactly
        elif percentile is None:
            scale = float(peaks[k])
        else:
            scale = float(np.percentile(np.concatenate(positives[k]), percentile))
        scales[population.source] = scale
    return scales
