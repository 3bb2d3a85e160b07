"""Training options that shape what a converted network will cost: activity, pruning, cut-offs.

Each option is a frozen dataclass handed to :func:`powersave.frontend.train_classifier`; each is
off unless given, and each says in its docstring what it adds to the loss or does to the forward
pass. With any option on, the model is run as the chain of ops the converter reads
(:func:`powersave.frontend._chain.chain_ops`), so the *populations* seen here are exactly the
graph's spiking populations: the input (population 0) and the ReLU output of every hidden layer,
before any max pool. Dropout is not applied on that path (the chain drops it).

Notation: ``a_ℓ`` is population ℓ's activation ``(B, *shape_ℓ)``, ``N_ℓ`` its neurons per sample,
``A_ℓ`` its scale (a neuron with ``a = A_ℓ`` fires at its window's start), ``L`` the number of
hidden populations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from powersave.frontend._chain import Op, chain_ops

if TYPE_CHECKING:
    from powersave.network import Network
    from powersave.plan import Plan


# -- the options --------------------------------------------------------------------------------


def _per_layer(value: float | Sequence[float], n: int, what: str) -> tuple[float, ...]:
    """``value`` broadcast to ``n`` layers, or checked to have ``n`` entries."""
    if isinstance(value, int | float):
        return (float(value),) * n
    values = tuple(float(v) for v in value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries, the model has {n} layers for it")
    return values


@dataclass(frozen=True)
class ActivityPenalty:
    """Penalise a differentiable surrogate of the number of spikes, per hidden population.

    Adds to the loss

        weight · Σ_ℓ λ_ℓ · (1/N_ℓ) · mean_b Σ_j tanh(a_ℓ,bj / (kappa · ā_ℓ))

    where ``ā_ℓ`` is the mean of the population's positive activations in the batch (detached: a
    scale, not a target). ``tanh(a/s)`` is 0 for a silent neuron and close to 1 for a firing one,
    so each term is the share of the population that spikes (a neuron spikes iff ``a > 0``);
    unlike an L1 penalty it cannot be lowered by shrinking every activation, only by silencing
    neurons, and its gradient ``1/s`` is largest on the weakly active neurons, the ones a cut-off
    would drop anyway. The input population is data, not learnt, and is not penalised.

    Attributes:
        weight: overall factor; 0 switches the term off.
        kappa: width of the surrogate relative to ``ā_ℓ``; smaller is closer to a hard count.
        layers: per hidden population factors ``λ_ℓ`` (e.g. each population's mean fan-out,
            to penalise synaptic operations rather than spikes); None gives 1 to each.
        warmup: the weight rises linearly from 0 over this fraction of the training steps.
            A network that has not learnt anything yet is silenced for good by a full-strength
            count penalty (a dead ReLU gets no gradient back); the small CNN needs this.
    """

    weight: float = 0.5
    kappa: float = 1.0
    layers: tuple[float, ...] | None = None
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and self.kappa > 0 and 0 <= self.warmup <= 1):
            raise ValueError(
                f"need weight >= 0, kappa > 0 and 0 <= warmup <= 1, got {self.weight}, "
                f"{self.kappa}, {self.warmup}"
            )

    def factor(self, step: int, total: int) -> float:
        """The weight's share at optimiser step ``step`` of ``total`` (the warm-up ramp)."""
        if self.warmup <= 0:
            return 1.0
        return min(1.0, step / (self.warmup * max(total, 1)))

    def loss(self, hidden: Sequence[torch.Tensor], ramp: float = 1.0) -> torch.Tensor:
        """The penalty for hidden populations ``hidden`` (each ``(B, *shape_ℓ)``), a scalar.

        ``ramp`` scales the weight (:meth:`factor`).
        """
        factors = _per_layer(1.0 if self.layers is None else self.layers, len(hidden), "layers")
        total = hidden[0].new_zeros(())
        for a, factor in zip(hidden, factors, strict=True):
            positive = a.detach()[a.detach() > 0]
            scale = positive.mean() if positive.numel() else a.new_ones(())
            total = total + factor * torch.tanh(a / (self.kappa * scale)).flatten(1).mean(1).mean()
        return ramp * self.weight * total


@dataclass(frozen=True)
class Pruning:
    """Gradual magnitude pruning to a target sparsity (Zhu & Gupta, 2017).

    Between ``start`` and ``end`` (fractions of the training steps) the sparsity of each Linear
    and Conv2d weight rises as ``s(t) = s_f · (1 − (1 − (t − t0)/(t1 − t0))³)``; every
    ``every`` steps the smallest-magnitude weights of each layer are set to zero so that a share
    ``s(t)`` of it is zero, and after every optimiser step the pruned weights are zeroed again.
    Nothing is added to the loss. Pruned weights end as **exact zeros**: the converted network's
    fan-outs count only non-zero weights, so a spike then costs only its remaining synapses.
    Biases are never pruned.

    Attributes:
        sparsity: the final share ``s_f`` of zero weights, one number for every layer or one per
            Linear/Conv2d layer in order (the readout included).
        start, end: when the ramp starts and ends, as fractions of the training steps;
            ``start == end`` prunes to ``s_f`` at that point at once.
        every: steps between mask updates during the ramp.
        keep_zeros: weights that are already exactly zero stay pruned (so that fine-tuning a
            pruned model keeps its zeros instead of growing them back).
    """

    sparsity: float | tuple[float, ...] = 0.9
    start: float = 0.1
    end: float = 0.7
    every: int = 10
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        values = (self.sparsity,) if isinstance(self.sparsity, int | float) else self.sparsity
        if not all(0.0 <= float(s) < 1.0 for s in values):
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not (0.0 <= self.start <= self.end <= 1.0) or self.every < 1:
            raise ValueError(
                f"need 0 <= start <= end <= 1 and every >= 1, got {self.start}, {self.end}, "
                f"{self.every}"
            )

    def level(self, step: int, total: int) -> float:
        """``s(t) / s_f`` at optimiser step ``step`` of ``total`` (0 before, 1 after the ramp)."""
        t, t0, t1 = step / max(total, 1), self.start, self.end
        if t < t0:
            return 0.0
        if t >= t1 or t1 == t0:
            return 1.0
        return 1.0 - (1.0 - (t - t0) / (t1 - t0)) ** 3


@dataclass(frozen=True)
class PowerAware:
    """Train with a power-saving mode's cut-offs active (straight-through gradients).

    In the forward pass each population ℓ (input included) keeps only activations at or above
    its threshold ``θ_ℓ = (1 − c_ℓ) · A_ℓ``: exactly what a cut-off ``c_ℓ`` does to a population
    of scale ``A_ℓ`` (a weaker neuron would fire after ``ℓ + c_ℓ`` and is never heard). The
    gradient passes straight through, as if nothing were dropped,
    ``y = a + stopgrad(a · 1[a ≥ θ] − a)``, so a neuron just below threshold still learns. The
    loss is unchanged; the network learns to be accurate when weak spikes are dropped.

    Attributes:
        thresholds: ``θ_ℓ`` per population, input first (``0`` drops nothing). Signed inputs
            are thresholded on ``|x|``, as their ON/OFF channels would be.
        scales: ``A_ℓ`` per population, or None. When given, activations above the scale are
            clipped to it (straight-through as well), as the time code saturates them: the
            forward pass is then exactly the mode's network. A cut-off can raise a downstream
            activation (a dropped input had a negative weight), so this clipping matters.
    """

    thresholds: tuple[float, ...]
    scales: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        values = tuple(float(t) for t in self.thresholds)
        if not all(math.isfinite(t) and t >= 0 for t in values):
            raise ValueError(f"thresholds must be finite and >= 0, got {self.thresholds}")
        object.__setattr__(self, "thresholds", values)
        if self.scales is not None:
            scales = tuple(float(s) for s in self.scales)
            if len(scales) != len(values) or not all(s > 0 for s in scales):
                raise ValueError(f"need one scale > 0 per threshold, got {self.scales}")
            object.__setattr__(self, "scales", scales)

    @classmethod
    def from_network(cls, network: Network, mode: str | Plan) -> PowerAware:
        """The thresholds of ``mode`` on ``network``, ``θ_ℓ = (1 − c_ℓ) · A_ℓ``, and its scales."""
        plan = network.plan(mode)
        pops = network.graph.populations
        return cls(
            tuple((1.0 - plan.cutoff(p.index)) * p.scale for p in pops),
            tuple(p.scale for p in pops),
        )

    def apply(self, a: torch.Tensor, population: int, signed: bool = False) -> torch.Tensor:
        """Population ``population``'s activation as the mode sends it; identity gradient."""
        theta = self.thresholds[population]
        magnitude = a.detach().abs() if signed else a.detach()
        sent = a.detach() * (magnitude >= theta)
        if self.scales is not None:
            ceiling = self.scales[population]
            sent = sent.clamp(-ceiling, ceiling)
        return a + (sent - a.detach())


@dataclass(frozen=True)
class Quantization:
    """Quantization-aware training for ``bits``-bit spike times (straight-through).

    In the forward pass each population's activation takes the value its spike time carries
    on a grid of ``2**bits`` steps per window (:func:`powersave.coding.quantize_times`, which
    rounds times down, i.e. intensities up, and saturates at the scale):
    ``q(a) = A_ℓ · min(ceil(a · 2^b / A_ℓ), 2^b) / 2^b`` for ``a > 0``, ``0`` otherwise; the
    gradient is the identity. Nothing is added to the loss.

    Attributes:
        bits: time steps per window are ``2**bits``.
        scales: ``A_ℓ`` per population, input first (e.g. :meth:`from_network`).
    """

    bits: int
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise ValueError(f"bits must be >= 1, got {self.bits}")
        scales = tuple(float(s) for s in self.scales)
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales must be finite and > 0, got {self.scales}")
        object.__setattr__(self, "scales", scales)

    @classmethod
    def from_network(cls, network: Network, bits: int) -> Quantization:
        """The grid of ``network``'s calibrated scales."""
        return cls(bits, tuple(p.scale for p in network.graph.populations))

    def apply(self, a: torch.Tensor, population: int) -> torch.Tensor:
        """``q(a)`` in the forward pass, identity gradient; ``a`` of any shape."""
        scale, steps = self.scales[population], float(2**self.bits)
        grid = torch.clamp(torch.ceil(a.detach() * (steps / scale)), 0.0, steps) * (scale / steps)
        return a + (torch.where(a.detach() > 0, grid, torch.zeros_like(grid)) - a).detach()


@dataclass(frozen=True)
class CriticalityPenalty:
    """Hold each hidden layer's gain χ near a target (the edge of chaos is χ = 1).

    The gain of layer ℓ, the map from population ℓ to population ℓ + 1, is the mean squared
    singular value of its Jacobian ``J_ℓ = ∂a_{ℓ+1}/∂a_ℓ`` on the data, normalised by the input
    size: ``χ_ℓ = ‖J_ℓ‖_F² / N_ℓ``. It is estimated with one random probe per sample, ``u_b``
    uniform on the unit sphere (so ``E‖J u‖² = ‖J‖_F²/N_ℓ``): ``χ̂_ℓ = mean_b ‖J_ℓ(x_b) u_b‖²``,
    ``J u`` propagated exactly through the layer (weights without bias, the ReLU's mask, the
    max pool's winners). Adds to the loss

        weight · Σ_ℓ (log χ̂_ℓ − log χ*_ℓ)²

    over the hidden layers (the readout's gain is measured, not held: nothing propagates past
    it). The log makes a gain of 2 as far from 1 as a gain of 1/2.

    Attributes:
        target: χ* for every hidden layer, or one per hidden layer.
        weight: overall factor.
    """

    target: float | tuple[float, ...] = 1.0
    weight: float = 0.1

    def __post_init__(self) -> None:
        values = (self.target,) if isinstance(self.target, int | float) else self.target
        if not all(float(t) > 0 for t in values) or self.weight < 0:
            raise ValueError(f"need targets > 0 and weight >= 0, got {self.target}, {self.weight}")

    def loss(self, chi: Sequence[torch.Tensor]) -> torch.Tensor:
        """The penalty for the hidden layers' estimated gains ``chi`` (scalars)."""
        targets = _per_layer(self.target, len(chi), "target")
        total = chi[0].new_zeros(())
        for c, t in zip(chi, targets, strict=True):
            total = total + (torch.log(c + 1e-12) - math.log(t)) ** 2
        return self.weight * total


@dataclass(frozen=True)
class TrainingOptions:
    """The options of one training run, for records: each None when off."""

    activity: ActivityPenalty | None = None
    pruning: Pruning | None = None
    power_aware: PowerAware | None = None
    quantization: Quantization | None = None
    criticality: CriticalityPenalty | None = None


# -- running the chain --------------------------------------------------------------------------


@dataclass
class ChainPass:
    """What :func:`chain_forward` returns for a batch.

    Attributes:
        logits: ``(B, classes)``.
        hidden: each hidden population's activation ``(B, *shape_ℓ)`` as computed (before a
            power-aware cut or quantization), for the activity penalty.
        chi: per hidden layer then the readout, the probe estimate ``χ̂_ℓ`` (empty unless asked).
    """

    logits: torch.Tensor
    hidden: list[torch.Tensor] = field(default_factory=list)
    chi: list[torch.Tensor] = field(default_factory=list)


def _apply(op: Op, h: torch.Tensor) -> torch.Tensor:
    if op.kind == "relu":
        return F.relu(h)
    if op.kind == "flatten":
        return h.flatten(1)
    assert op.module is not None
    return op.module(h)


def _tangent(op: Op, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J v`` of ``op`` at input ``h``: exact for these piecewise-linear ops."""
    module: Any = op.module
    if op.kind == "linear":
        return F.linear(v, module.weight)
    if op.kind == "conv":
        return module._conv_forward(v, module.weight, None)
    if op.kind == "relu":
        return v * (h > 0)
    if op.kind == "flatten":
        return v.flatten(1)
    if op.kind == "avgpool":
        return module(v)
    if op.kind == "maxpool":
        _, index = F.max_pool2d(
            h,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.ceil_mode,
            return_indices=True,
        )
        flat = v.flatten(2).gather(2, index.flatten(2))
        return flat.view_as(index)
    if op.kind == "batchnorm":
        # The per-sample Jacobian with running (or batch) statistics: a per-channel scale.
        var = module.running_var if not module.training else h.var((0, *range(2, h.dim())))
        gain = torch.rsqrt(var + module.eps)
        if module.weight is not None:
            gain = gain * module.weight
        return v * gain.view(1, -1, *([1] * (h.dim() - 2)))
    raise ValueError(f"no tangent rule for {op.label}")  # pragma: no cover - kinds are closed


def _probe(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """One random direction per sample, uniform on the unit sphere: ``(B, *shape)``."""
    u = torch.randn(shape, dtype=like.dtype, device=like.device)
    norm = u.flatten(1).norm(dim=1).clamp_min(1e-12)
    return u / norm.view(-1, *([1] * (u.dim() - 1)))


def chain_forward(
    ops: Sequence[Op],
    x: torch.Tensor,
    *,
    power_aware: PowerAware | None = None,
    quantization: Quantization | None = None,
    chi: bool = False,
    signed: bool = False,
) -> ChainPass:
    """Run the chain ``ops`` on ``x`` ``(B, *input_shape)``, with the options' forward changes.

    Populations are the input and every ReLU's output. With ``chi``, a fresh unit probe starts
    at each population and is propagated with the layer's Jacobian to the next population (or
    the logits), giving ``χ̂_ℓ = mean_b ‖J_ℓ u_b‖²`` for every layer (the readout last). The
    probes are drawn from torch's global RNG (seed it, as the training loop does).
    """
    n_pops = 1 + sum(op.kind == "relu" for op in ops)
    for option, what in ((power_aware, "thresholds"), (quantization, "scales")):
        if option is not None and len(getattr(option, what)) != n_pops:
            raise ValueError(
                f"{type(option).__name__} has {len(getattr(option, what))} {what}, the model "
                f"has {n_pops} spiking populations (the input and {n_pops - 1} hidden)"
            )

    def population(a: torch.Tensor, index: int) -> torch.Tensor:
        if power_aware is not None:
            a = power_aware.apply(a, index, signed and index == 0)
        if quantization is not None:
            if signed and index == 0:
                a = quantization.apply(a.clamp_min(0), 0) - quantization.apply((-a).clamp_min(0), 0)
            else:
                a = quantization.apply(a, index)
        return a

    result = ChainPass(logits=x)
    h = population(x, 0)
    index = 0
    v = _probe(h.shape, h) if chi else None
    for op in ops:
        out = _apply(op, h)
        if v is not None:
            v = _tangent(op, h, v)
        h = out
        if op.kind == "relu":
            index += 1
            result.hidden.append(h)
            if v is not None:
                result.chi.append(v.flatten(1).pow(2).sum(1).mean())
                v = _probe(h.shape, h)
            h = population(h, index)
    if v is not None:
        result.chi.append(v.flatten(1).pow(2).sum(1).mean())
    result.logits = h.flatten(1)
    return result


def _prunable(ops: Sequence[Op]) -> list[torch.Tensor]:
    """The weights of the chain's Linear and Conv2d layers, in order."""
    return [
        cast(torch.Tensor, op.module.weight)
        for op in ops
        if op.kind in ("linear", "conv") and op.module is not None
    ]


class _Pruner:
    """Holds the masks of :class:`Pruning` for one training run."""

    def __init__(self, pruning: Pruning, weights: list[torch.Tensor], total_steps: int) -> None:
        self.pruning = pruning
        self.weights = weights
        self.total = total_steps
        self.targets = _per_layer(pruning.sparsity, len(weights), "sparsity")
        self.masks: list[torch.Tensor] = [
            (w.detach() != 0) if pruning.keep_zeros else torch.ones_like(w, dtype=torch.bool)
            for w in weights
        ]
        self.last_level = -1.0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Recompute the masks at ``step`` (on the schedule), then zero the pruned weights."""
        level = self.pruning.level(step, self.total)
        due = level != self.last_level and (step % self.pruning.every == 0 or level == 1.0)
        if level > 0 and due:
            for i, (weight, target) in enumerate(zip(self.weights, self.targets, strict=True)):
                k = round(target * level * weight.numel())
                if k > 0:
                    magnitude = (weight * self.masks[i]).abs().flatten()
                    # The k smallest go (ties by index, so exactly k); pruned weights are 0
                    # and among them, so a mask only ever loses weights.
                    order = torch.argsort(magnitude, stable=True)
                    mask = torch.ones_like(magnitude, dtype=torch.bool)
                    mask[order[:k]] = False
                    self.masks[i] = self.masks[i] & mask.view_as(weight)
            self.last_level = level
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for weight, mask in zip(self.weights, self.masks, strict=True):
            weight.mul_(mask)


def weight_sparsity(model: nn.Module) -> list[dict[str, Any]]:
    """Per Linear/Conv2d layer of ``model``'s chain: name, weights and the share that is zero."""
    rows = []
    for op in chain_ops(model):
        if op.kind in ("linear", "conv") and op.module is not None:
            weight: torch.Tensor = op.module.weight  # type: ignore[assignment]
            zeros = int((weight == 0).sum())
            share = zeros / weight.numel()
            rows.append({"name": op.name, "weights": weight.numel(), "zero_share": share})
    return rows


class OptionsRunner:
    """Binds :class:`TrainingOptions` to a model: the loss of a batch, and the pruning masks."""

    def __init__(self, model: nn.Module, options: TrainingOptions, total_steps: int) -> None:
        self.options = options
        self.ops = chain_ops(model)
        if options.activity is not None or options.criticality is not None:
            if not any(op.kind == "relu" for op in self.ops):
                raise ValueError("activity and criticality penalties need a hidden ReLU layer")
        self.pruner = (
            _Pruner(options.pruning, _prunable(self.ops), total_steps)
            if options.pruning is not None
            else None
        )
        self.step = 0
        self.total = total_steps

    def loss(self, x: torch.Tensor, y: torch.Tensor, signed: bool) -> tuple[torch.Tensor, dict]:
        """Cross-entropy plus the penalties on batch ``x`` ``(B, ...)``, ``y`` ``(B,)``."""
        o = self.options
        out = chain_forward(
            self.ops,
            x,
            power_aware=o.power_aware,
            quantization=o.quantization,
            chi=o.criticality is not None,
            signed=signed,
        )
        loss = F.cross_entropy(out.logits, y)
        parts = {"ce": float(loss.detach())}
        if o.activity is not None and out.hidden:
            term = o.activity.loss(out.hidden, o.activity.factor(self.step, self.total))
            parts["activity"] = float(term.detach())
            loss = loss + term
        if o.criticality is not None and out.chi:
            term = o.criticality.loss(out.chi[:-1])
            parts["chi"] = float(term.detach())
            loss = loss + term
        return loss, parts

    def after_step(self, step: int) -> None:
        self.step = step
        if self.pruner is not None:
            self.pruner.update(step)
