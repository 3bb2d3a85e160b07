"""The reference simulator: the temporal code of DESIGN.md §1 run literally on a clock.

This is the executable specification. It is slow (plain numpy, a Python loop over time steps,
convolutions unrolled into explicit matrices) and meant for small networks only; every faster
engine must agree with it. Readability comes first.

Time is in units of the window τ = 1. Population ℓ (ℓ = 0 is the input after the ON/OFF split)
sends its spikes in the window ``[ℓ, ℓ + 1)``; the synaptic layer it feeds integrates them during
that same window and, if it is hidden, fires its own population in ``[ℓ + 1, ℓ + 2)``. Each window
is cut into ``K = 1/dt`` clock steps ``t_k = ℓ + k/K``, ``k = 0 … K``. The clock runs window by
window, one layer after the other: a layer receives spikes only during its input window and sends
nothing back, so this is the same as one global clock stepping every layer at once, and it keeps
only one layer's state ``(N, neurons)`` in memory.

The neuron model, for neuron ``j`` of the layer fed by population ℓ of scale ``A_ℓ``:

* **Integration** on ``[ℓ, ℓ + 1)``. An input spike of neuron ``i`` at ``t_i`` starts a constant
  current ``w_ij`` (potential per unit time) that lasts to the end of the window; the bias is a
  constant current ``b_j / A_ℓ`` over the whole window. So, with ``a_i = A_ℓ (ℓ + 1 - t_i)`` the
  intensity the spike carries (0 for a silent neuron)::

      V_j(ℓ + 1) = (b_j + Σ_i w_ij a_i) / A_ℓ = z_j / A_ℓ.

  Each step adds the exact integral of the piecewise-constant current over the step (an input
  arriving mid-step contributes ``w_ij (t_k - t_i)`` in that step), so ``V`` on the grid is exact
  up to float rounding.
* **Firing** on ``[ℓ + 1, ℓ + 2)`` (hidden layers only). The synaptic currents stop and a constant
  drive ``s = A_{ℓ+1} / A_ℓ`` starts, with threshold ``θ = s``. The first grid step where
  ``V >= θ`` holds the crossing; ``V`` is linear inside the step, so linear interpolation places
  the spike exactly: ``t = t_k - (V_k - θ) / s = ℓ + 2 - z_j / A_{ℓ+1}``, the encoding of
  ``a_j = z_j`` (:func:`powersave.coding.encode`). ``V >= θ`` already at ``ℓ + 1``
  (``z_j >= A_{ℓ+1}``) fires at ``ℓ + 1``: saturation. A neuron that only reaches ``θ`` at
  ``ℓ + 2`` or later (``z_j <= 0``) stays silent (``t = inf``). Each neuron fires at most once.
* **Readout** (the last synaptic node) does not fire: its logit is ``A_ℓ V_j(ℓ + 1) = z_j``.

Other nodes: :class:`~powersave.graph.nodes.MaxPool` relays the first spike of each pool (no
window of its own, no operations); :class:`~powersave.graph.nodes.Flatten` reshapes;
:class:`~powersave.graph.nodes.AvgPool` is a synaptic layer with fixed weights ``1/(kh kw)`` and
no bias (padding taps are silent inputs), with its own scale. Conv and AvgPool are unrolled here
into explicit ``(out_elems, in_elems)`` connectivity matrices built with plain loops, so the
simulator shares no kernel with :mod:`powersave.engine.ops` and checks it.

Power plans: spikes of population ℓ later than ``ℓ + c_ℓ`` (``c_ℓ = plan.cutoff(ℓ)``) are never
sent: they are dropped before anything receives them, max pools included, and reported as silent.
Early decision (``plan.early_decision``) is not the reference's job and is ignored: the readout
always integrates its whole window, which gives the decision an early stop must certify.

Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from powersave.coding import NEVER, encode, split_on_off
from powersave.errors import InputError
from powersave.graph.graph import Graph
from powersave.graph.nodes import (
    AvgPool,
    Conv,
    Dense,
    Flatten,
    MaxPool,
    Shape,
    conv_output_hw,
)
from powersave.plan import FULL, Plan


@dataclass(frozen=True)
class ReferenceResult:
    """What :func:`simulate` returns for a batch of ``N`` samples.

    Attributes:
        times: spike times of each spiking population, in ``graph.populations`` order (the input
            after the ON/OFF split first), each ``(N, *population.shape)`` float64: times of
            population ℓ lie in ``[ℓ, ℓ + 1)``; ``inf`` for a neuron that never fires or whose spike
            a cut-off dropped. Populations are recorded before any max pool.
        logits: ``(N, classes)`` float64, the readout potentials at the end of the readout's input
            window in logit units, ``A_ℓ V(ℓ + 1)``.
        predictions: ``(N,)`` int, ``argmax`` of the logits.
    """

    times: tuple[np.ndarray, ...]
    logits: np.ndarray
    predictions: np.ndarray


def simulate(
    graph: Graph, x: np.ndarray, *, dt: float = 1e-3, plan: Plan | None = None
) -> ReferenceResult:
    """Run ``graph`` on the batch ``x`` with a clock of step ``dt`` (see the module docstring).

    Args:
        graph: the network.
        x: ``(N, *graph.input.shape)`` real, finite inputs (before the ON/OFF split).
        dt: clock step in windows; ``1/dt`` must be an integer. The spike times do not depend on it
            beyond float rounding (integration and interpolation are exact); only the run time
            does, as ``N * neurons / dt``.
        plan: cut-offs to apply (``None``: nothing dropped). Its early decision is ignored.

    Returns:
        The spike times of every population, the logits and the predictions.
    """
    steps = _steps_per_window(dt)
    plan = FULL if plan is None else plan
    populations = graph.populations
    if plan.cutoffs and len(plan.cutoffs) != len(populations):
        raise ValueError(
            f"plan {plan.name!r} has {len(plan.cutoffs)} cut-offs but the graph has "
            f"{len(populations)} spiking populations (input first): give one per population, "
            f"or none"
        )
    x = _check_input(graph, x)
    n = x.shape[0]

    # Window 0: the input population is encoded exactly, not simulated.
    scale = populations[0].scale
    spikes = _cut(encode(split_on_off(x, graph.input.signed), scale, 0), plan.cutoff(0), 0)
    times = [spikes]
    window = 0
    flowing = spikes  # (N, *shape): spike times of what the next node receives
    for i, node in enumerate(graph.nodes[1:], start=1):
        input_shape = graph.shapes[i - 1]
        if isinstance(node, Flatten):
            flowing = flowing.reshape(n, -1)
        elif isinstance(node, MaxPool):
            members = _pool_members(node, input_shape)
            flowing = _first_spike(flowing.reshape(n, -1), members).reshape(n, *graph.shapes[i])
        elif isinstance(node, Dense | Conv | AvgPool):
            weight, bias = _connectivity(node, input_shape)
            potential = _integrate(flowing.reshape(n, -1), weight, bias, scale, window, steps)
            if i == graph.readout_index:
                # Only Flatten may follow the readout: the logits are flat in C order anyway.
                logits = scale * potential
                return ReferenceResult(tuple(times), logits, np.argmax(logits, axis=1))
            next_scale = float(node.scale)  # type: ignore[arg-type]  # hidden: has a scale
            window += 1
            spikes = _fire(potential, next_scale / scale, window, steps)
            spikes = _cut(spikes, plan.cutoff(window), window).reshape(n, *graph.shapes[i])
            times.append(spikes)
            flowing = spikes
            scale = next_scale
    raise AssertionError("a validated graph ends in a readout")  # pragma: no cover


# -- the neuron model -----------------------------------------------------------------------------


def _grid(window: int, steps: int) -> np.ndarray:
    """Clock times ``t_k = window + k/steps``, ``k = 0 … steps``: ``(steps + 1,)`` float64.

    Computed as ``(window * steps + k) / steps`` so that both ends are exact integers.
    """
    return (window * steps + np.arange(steps + 1, dtype=np.float64)) / steps


def _integrate(
    times: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    scale: float,
    window: int,
    steps: int,
) -> np.ndarray:
    """Potential at the end of the input window ``[window, window + 1)``.

    Args:
        times: ``(N, in)`` input spike times (``inf`` when silent).
        weight: ``(out, in)`` synaptic currents ``w_ij`` (potential per unit time).
        bias: ``(out,)`` biases in activation units; the bias current is ``bias / scale``.
        scale: ``A_ℓ`` of the input population.

    Returns:
        ``(N, out)``: ``V(window + 1) = (bias + weight @ a) / scale`` with ``a = scale * (window + 1
        - times)``, the sum over clock steps of the exact integral of the current in each step.
    """
    grid = _grid(window, steps)
    bias_current = bias / scale  # (out,)
    potential = np.zeros((times.shape[0], weight.shape[0]))  # (N, out), V(window) = 0
    for k in range(1, steps + 1):
        start, end = grid[k - 1], grid[k]
        step = end - start
        # How long the current of each input flowed during [start, end): the whole step if the
        # spike came before, the part after it if it comes mid-step, nothing if it has not come
        # (a silent input, t = inf, never comes).
        flowing_for = np.clip(end - times, 0.0, step)  # (N, in)
        potential += flowing_for @ weight.T + bias_current * step
    return potential


def _fire(potential: np.ndarray, drive: float, window: int, steps: int) -> np.ndarray:
    """Spike times in ``[window, window + 1)`` of neurons starting the window at ``potential``.

    A constant drive ``s = drive`` (``A_{ℓ+1}/A_ℓ``) charges every neuron towards the threshold
    ``θ = s``. Returns ``(N, out)`` float64 times, ``inf`` for neurons that do not cross before
    ``window + 1``.
    """
    threshold = drive
    grid = _grid(window, steps)
    fired = potential >= threshold  # saturation: already at threshold when the drive starts
    times = np.where(fired, float(window), NEVER)
    for k in range(1, steps + 1):
        # The exact integral of the constant drive since the window opened, rather than a sum
        # of per-step increments: a neuron with V = 0 then reaches θ exactly at the window's end
        # (silent, as the code says) instead of a rounding error too early.
        v = potential + drive * (grid[k] - window)
        crossing = ~fired & (v >= threshold)
        # V is linear inside the step, so interpolation is exact.
        times = np.where(crossing, grid[k] - (v - threshold) / drive, times)
        fired |= crossing
    # Reaching θ only at the window's end means V(ℓ + 1) <= 0: such a neuron never fires.
    return np.where(times < window + 1, times, NEVER)


def _first_spike(times: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Max pooling in the time code: ``(N, in)`` times → ``(N, out)``, the first spike per pool.

    ``members`` is ``(out, in)`` boolean; a pool with no spike stays silent.
    """
    return np.where(members[None, :, :], times[:, None, :], NEVER).min(axis=2)


def _cut(times: np.ndarray, cutoff: float, window: int) -> np.ndarray:
    """Drop the spikes of population ``window`` later than ``window + cutoff``: never sent."""
    return np.where(times <= window + cutoff, times, NEVER)


# -- connectivity, unrolled with plain loops ------------------------------------------------------


def _taps(
    hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Every kernel tap that lands on the input: ``(oy, ox, ky, kx, iy, ix)``.

    Taps on the zero padding are left out: a padded neuron is silent and contributes nothing.
    """
    out_h, out_w = conv_output_hw(hw, kernel, stride, padding)
    for oy in range(out_h):
        for ox in range(out_w):
            for ky in range(kernel[0]):
                for kx in range(kernel[1]):
                    iy = oy * stride[0] - padding[0] + ky
                    ix = ox * stride[1] - padding[1] + kx
                    if 0 <= iy < hw[0] and 0 <= ix < hw[1]:
                        yield oy, ox, ky, kx, iy, ix


def _connectivity(
    node: Dense | Conv | AvgPool, input_shape: Shape
) -> tuple[np.ndarray, np.ndarray]:
    """The node as a dense layer: ``(weight (out_elems, in_elems), bias (out_elems,))`` float64.

    Element indices are C-order flat indices of the per-sample shapes, so that
    ``weight @ a.ravel() + bias`` equals the node applied to ``a`` of shape ``input_shape``.
    """
    if isinstance(node, Dense):
        return node.weight.astype(np.float64), node.bias.astype(np.float64)
    out_shape = node.output_shape(input_shape)
    in_size, out_size = int(np.prod(input_shape)), int(np.prod(out_shape))
    weight = np.zeros((out_size, in_size))
    hw = (input_shape[1], input_shape[2])
    if isinstance(node, Conv):
        for o in range(out_shape[0]):
            for c in range(input_shape[0]):
                for oy, ox, ky, kx, iy, ix in _taps(hw, node.kernel, node.stride, node.padding):
                    row = np.ravel_multi_index((o, oy, ox), out_shape)
                    col = np.ravel_multi_index((c, iy, ix), input_shape)
                    weight[row, col] = node.weight[o, c, ky, kx]
        bias = np.repeat(node.bias.astype(np.float64), out_shape[1] * out_shape[2])
        return weight, bias
    # AvgPool: the divisor is the whole kernel, padding taps included (they count as zeros).
    share = 1.0 / (node.kernel[0] * node.kernel[1])
    for c in range(input_shape[0]):
        for oy, ox, _, _, iy, ix in _taps(hw, node.kernel, _pool_stride(node), node.padding):
            row = np.ravel_multi_index((c, oy, ox), out_shape)
            col = np.ravel_multi_index((c, iy, ix), input_shape)
            weight[row, col] = share
    return weight, np.zeros(out_size)


def _pool_stride(node: MaxPool | AvgPool) -> tuple[int, int]:
    # The node fills a missing stride with its kernel when built; the annotation still allows None.
    return node.kernel if node.stride is None else node.stride


def _pool_members(node: MaxPool, input_shape: Shape) -> np.ndarray:
    """``(out_elems, in_elems)`` boolean: which input neurons each max-pool output watches."""
    out_shape = node.output_shape(input_shape)
    members = np.zeros((int(np.prod(out_shape)), int(np.prod(input_shape))), dtype=bool)
    hw = (input_shape[1], input_shape[2])
    for c in range(input_shape[0]):
        for oy, ox, _, _, iy, ix in _taps(hw, node.kernel, _pool_stride(node), node.padding):
            row = np.ravel_multi_index((c, oy, ox), out_shape)
            col = np.ravel_multi_index((c, iy, ix), input_shape)
            members[row, col] = True
    return members


# -- argument checks ------------------------------------------------------------------------------


def _steps_per_window(dt: float) -> int:
    dt = float(dt)
    if not (np.isfinite(dt) and 0.0 < dt <= 1.0):
        raise ValueError(f"dt must be in (0, 1] (a fraction of the window τ = 1), got {dt}")
    steps = round(1.0 / dt)
    if abs(steps * dt - 1.0) > 1e-9:
        raise ValueError(
            f"dt must divide the window τ = 1 (1/dt an integer), got dt = {dt}; "
            f"try dt = {1.0 / steps:g}"
        )
    return steps


def _check_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    expected = graph.input.shape
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise InputError(
            f"input {graph.input.name!r} takes a batch of shape "
            f"(N, {', '.join(map(str, expected))}), got {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"input {graph.input.name!r} must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError(f"input {graph.input.name!r} contains NaN or infinite values")
    return x


__all__ = ["ReferenceResult", "simulate"]
