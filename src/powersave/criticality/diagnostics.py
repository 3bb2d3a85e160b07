"""Layer gains χ and branching ratios of a converted network (DESIGN.md §4). Numpy only.

**Gain.** Layer ℓ maps population ℓ to population ℓ + 1 (the last one maps to the logits). Its
gain on data is the mean squared singular value of its Jacobian, normalised by its input size,

    χ_ℓ = E_x ‖J_ℓ(x)‖_F² / N_ℓ,        J_ℓ = ∂s_{ℓ+1} / ∂s_ℓ,

where ``s_ℓ`` is what population ℓ sends (its activation, minus anything a mode's cut-off
drops) and ``N_ℓ`` its size. A random perturbation of the input of the layer grows on average by
χ_ℓ in squared norm: χ < 1 is the ordered phase (perturbations die out), χ > 1 the chaotic one,
χ = 1 the edge between them (Poole et al. 2016; Schoenholz et al. 2017). It is estimated with
probes ``u`` uniform on the unit sphere, ``E_u ‖J u‖² = ‖J‖_F² / N``, propagated exactly through
the layer (the network is piecewise linear: weights without bias, the ReLU's and cut-off's mask,
the max pool's winners). The network measured is the ReLU network the graph encodes: the
clipping of activations at the scale ``A_ℓ`` (a small share, reported by the engines) is ignored.

**Branching ratio.** The spikes of population ℓ + 1 per spike of population ℓ,
``σ_ℓ = S_{ℓ+1} / S_ℓ`` (totals over the batch): activity that neither grows nor shrinks from
layer to layer has σ = 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from powersave.coding import split_on_off
from powersave.engine import ops
from powersave.graph.nodes import SYNAPTIC_TYPES, AvgPool, Flatten, MaxPool
from powersave.network import Network
from powersave.plan import Plan


@dataclass(frozen=True)
class LayerGain:
    """χ of one layer.

    Attributes:
        layer: name of the synaptic node (``"readout"`` role for the last one).
        source: name of the population it reads.
        chi: the estimate of ``χ_ℓ``.
        stderr: its standard error over samples and probes.
        readout: whether this is the readout layer (it maps to logits, not to spikes).
    """

    layer: str
    source: str
    chi: float
    stderr: float
    readout: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _maxpool_tangent(a: np.ndarray, v: np.ndarray, node: MaxPool) -> tuple[np.ndarray, np.ndarray]:
    """Max pool of ``a`` ``(N, C, H, W)`` and the tangent ``v`` taken at each window's winner.

    Ties go to the first tap in row-major order (for a silent window every tangent is 0 anyway,
    since the ReLU mask has zeroed it).
    """
    a_taps = ops.pool_taps(a, node, -np.inf)
    v_taps = ops.pool_taps(v, node, 0.0)
    best, tangent = next(a_taps).copy(), next(v_taps).copy()
    for tap, v_tap in zip(a_taps, v_taps, strict=True):
        better = tap > best
        best = np.where(better, tap, best)
        tangent = np.where(better, v_tap, tangent)
    return best, tangent


def _unit_probes(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``(N, *sample_shape)`` directions, each uniform on the unit sphere, float64."""
    u = rng.standard_normal(shape)
    norms = np.sqrt((u.reshape(shape[0], -1) ** 2).sum(axis=1))
    return u / np.maximum(norms, 1e-300).reshape(-1, *([1] * (len(shape) - 1)))


def layer_gains(
    network: Network,
    x: Any,
    *,
    mode: str | Plan = "full",
    probes: int = 4,
    seed: int = 0,
    chunk_size: int = 256,
) -> tuple[LayerGain, ...]:
    """Estimate each layer's gain χ on the inputs ``x`` (module docstring for the definition).

    Args:
        network: the converted network.
        x: inputs ``(N, *input_shape)``; the expectation over data is their mean.
        mode: a mode whose cut-offs count as part of the network (a dropped activation passes
            no perturbation on); ``"full"`` measures the ReLU network itself.
        probes: random directions per sample (the estimate's variance falls as ``1/(N·probes)``).
        seed: seeds the probes.
        chunk_size: samples per chunk (memory).

    Returns:
        one :class:`LayerGain` per synaptic layer, in order, the readout last.
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    graph = network.graph
    plan = network.plan(mode)
    batch = network.check_inputs(x)
    rng = np.random.default_rng(seed)
    pops = graph.populations
    thresholds = [(1.0 - plan.cutoff(p.index)) * p.scale for p in pops]
    readout = graph.readout_index
    # W u without the bias: the Jacobian of a synaptic node is its linear part.
    linear = {
        i: replace(node, bias=np.zeros_like(node.bias)) if not isinstance(node, AvgPool) else node
        for i, node in enumerate(graph.nodes)
        if isinstance(node, SYNAPTIC_TYPES)
    }
    squares: list[list[np.ndarray]] = [[] for _ in linear]
    for start in range(0, batch.shape[0], chunk_size):
        part = np.repeat(batch[start : start + chunk_size], probes, axis=0).astype(np.float64)
        a = split_on_off(part, graph.input.signed)
        a = np.where(a >= thresholds[0], a, 0.0)
        v = _unit_probes(a.shape, rng)
        layer = 0
        for i, node in enumerate(graph.nodes[1:], start=1):
            if isinstance(node, Flatten):
                a, v = a.reshape(a.shape[0], -1), v.reshape(v.shape[0], -1)
                continue
            if isinstance(node, MaxPool):
                a, v = _maxpool_tangent(a, v, node)
                continue
            assert isinstance(node, SYNAPTIC_TYPES)
            z = ops.synaptic(a, node)
            jv = ops.synaptic(v, linear[i])
            if i != readout:
                keep = (z > 0) & (z >= thresholds[layer + 1])
                a = np.where(keep, z, 0.0)
                jv = np.where(keep, jv, 0.0)
            squares[layer].append((jv.reshape(jv.shape[0], -1) ** 2).sum(axis=1))
            if i != readout:
                v = _unit_probes(a.shape, rng)
            layer += 1
    names = [graph.nodes[i].name for i in linear]
    gains = []
    for k, (name, parts) in enumerate(zip(names, squares, strict=True)):
        values = np.concatenate(parts)
        stderr = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
        gains.append(
            LayerGain(
                layer=name,
                source=pops[k].source,
                chi=float(values.mean()),
                stderr=stderr,
                readout=k == len(names) - 1,
            )
        )
    return tuple(gains)


def hidden_chi_geomean(gains: Sequence[LayerGain]) -> float | None:
    """Geometric mean of the hidden layers' χ (the readout excluded, and layers with χ = 0):
    one number per network; ``None`` when there is none to average."""
    hidden = [g.chi for g in gains if not g.readout and g.chi > 0]
    return float(np.exp(np.mean(np.log(hidden)))) if hidden else None


def branching_ratio(spikes: Sequence[float]) -> list[float | None]:
    """``σ_ℓ = S_{ℓ+1} / S_ℓ`` for populations' spike counts ``spikes`` (input first).

    Any consistent counts work: totals (:attr:`RunStats.spikes`) or per-sample means. ``None``
    where population ℓ sent nothing (the ratio is undefined).
    """
    counts = [float(s) for s in spikes]
    return [b / a if a > 0 else None for a, b in itertools.pairwise(counts)]
