"""The event engine (numpy): spike times in closed form, work only for spikes that are sent.

Each population's spike times come from the closed form of the neuron model (DESIGN.md §1): a
neuron whose potential at the end of its input window decodes to ``z`` fires at
``ℓ + 1 + (1 - min(z, A)/A)`` if ``z > 0``. A hidden layer's potential at the end of its window
does not depend on the order in which its input spikes arrived (the sum commutes), so a window's
spikes are delivered together, as ``weight @ decoded intensities`` where silent neurons decode to
zero and contribute nothing; the operation count is that of the spikes only. Order matters for
the readout's early decision, which processes its input spikes sorted by time.

This is the readable path: vectorised over the batch, no compiled kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from powersave.coding import decode, encode, split_on_off
from powersave.engine import dense as dense_pass
from powersave.engine import ops
from powersave.engine.costs import SynapticCost, synaptic_cost
from powersave.engine.stats import RunStats
from powersave.graph.graph import Graph
from powersave.graph.nodes import SYNAPTIC_TYPES, Dense, Flatten, MaxPool
from powersave.plan import FULL, Plan


@dataclass(frozen=True)
class EventResult:
    """What :func:`run_events` returns for one batch.

    Attributes:
        logits: ``(N, classes)`` readout potentials in logit units. With an early decision they
            are the potentials at the moment of the decision (the argmax is certified to be the
            one full processing gives, the values are partial).
        stats: the counts.
        times: spike times per population ``(N, *shape)`` as sent (``inf`` = silent or cut
            off), if recorded.
        fired: the times each neuron reached threshold, before any cut-off, if recorded.
        decision_times: ``(N,)`` time at which the readout decided (end of its window without an
            early decision).
    """

    logits: np.ndarray
    stats: RunStats
    times: tuple[np.ndarray, ...] | None
    decision_times: np.ndarray
    fired: tuple[np.ndarray, ...] | None = None


def graph_costs(graph: Graph) -> tuple[SynapticCost, ...]:
    """Static costs of each synaptic node, in graph order."""
    return tuple(
        synaptic_cost(node, graph.input_shape_of(i), graph.shapes[i])  # type: ignore[arg-type]
        for i, node in enumerate(graph.nodes)
        if isinstance(node, SYNAPTIC_TYPES)
    )


def count_ops(fired: np.ndarray, fanout: np.ndarray) -> int:
    """Synaptic operations: each fired neuron times its non-zero fan-out, summed over the batch."""
    return int(np.tensordot(fired.astype(np.int64), fanout, axes=fired.ndim - 1).sum())


#: A neuron saturates when its potential exceeds the scale ``A`` by more than this share
#: (float32 rounding of the code).
SATURATION_MARGIN = 1e-5


def count_saturated(a: np.ndarray, scale: float) -> int:
    """Neurons clipped by the scale: above ``A`` by more than float32 rounding of the code."""
    return int(np.count_nonzero(a > scale * (1 + SATURATION_MARGIN)))


def zero_skip_ops(
    graph: Graph, x: np.ndarray, costs: tuple[SynapticCost, ...], chunk_size: int = 128
) -> tuple[int, ...]:
    """The zero-skipping baseline per layer: the ReLU network's non-zero activations × fan-out.

    Runs the dense pass ``chunk_size`` samples at a time, so memory stays bounded.
    """
    totals = [0] * len(costs)
    for i in range(0, x.shape[0], chunk_size):
        inputs = dense_pass.forward(graph, x[i : i + chunk_size]).layer_inputs
        for k, (a, cost) in enumerate(zip(inputs, costs, strict=True)):
            totals[k] += count_ops(a != 0, cost.fanout)
    return tuple(totals)


def cut_late_spikes(times: np.ndarray, window: int, plan: Plan) -> np.ndarray:
    """Drop spikes of population ``window`` later than its cut-off ``window + c``."""
    c = plan.cutoff(window)
    if c >= 1.0:
        return times
    return np.where(times <= window + c, times, np.inf)


def encode_population(
    a: np.ndarray, scale: float, window: int, plan: Plan
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Activations ``a`` of population ``window`` as spikes: the times before and after the
    plan's cut-off, the neurons saturated, and the spikes sent."""
    fired_times = encode(a, scale, window)
    times = cut_late_spikes(fired_times, window, plan)
    return fired_times, times, count_saturated(a, scale), int(np.count_nonzero(np.isfinite(times)))


def run_events(
    graph: Graph,
    x: np.ndarray,
    plan: Plan = FULL,
    *,
    costs: tuple[SynapticCost, ...] | None = None,
    record_spikes: bool = False,
    baselines: bool = True,
) -> EventResult:
    """Run a validated batch ``x`` of shape ``(N, *graph.input.shape)`` through the spiking network.

    Args:
        graph: the network.
        x: float inputs, already checked.
        plan: cut-offs and early decision (:data:`powersave.plan.FULL` drops nothing).
        costs: :func:`graph_costs` of ``graph``, to avoid recomputing them per call.
        record_spikes: keep every population's spike times in the result.
        baselines: also run the ReLU network densely to count the zero-skipping baseline
            (``layer_zero_skip_ops`` are zeros without it; calibration searches skip it).
    """
    if plan.cutoffs and len(plan.cutoffs) != graph.n_windows:
        raise ValueError(
            f"plan {plan.name!r} has {len(plan.cutoffs)} cut-offs, the network has "
            f"{graph.n_windows} spiking populations"
        )
    costs = graph_costs(graph) if costs is None else costs
    n = x.shape[0]

    # Window 0: the input population, ON/OFF split when signed.
    a = split_on_off(x.astype(np.float32, copy=False), graph.input.signed)
    scale = graph.input.scale
    fired_times, times, clipped, sent = encode_population(a, scale, 0, plan)
    saturated, spikes = [clipped], [sent]
    recorded = [times] if record_spikes else []
    recorded_fired = [fired_times] if record_spikes else []
    window = 0

    synops: list[int] = []
    saved = 0
    decision_times = np.full(n, float(graph.n_windows))
    readout = graph.readout_index
    layer = 0
    logits = np.empty((n, 0), dtype=np.float32)
    for i, node in enumerate(graph.nodes[1:], start=1):
        if isinstance(node, Flatten):
            times = times.reshape(n, -1)
            continue
        if isinstance(node, MaxPool):
            times = ops.minpool2d(times, node)  # the first spike in each pool wins
            continue
        assert isinstance(node, SYNAPTIC_TYPES)
        fanout = costs[layer].fanout
        fired = np.isfinite(times)
        a = decode(times, scale, window).astype(np.float32)
        if i == readout and plan.early_decision:
            if not isinstance(node, Dense):
                raise ValueError(
                    f"early decision needs a Dense readout; {node.name!r} is a convolution"
                )
            logits, used, decision_times = _early_decision(
                times, a, node, fanout, scale, window, plan.margin
            )
            full_ops = count_ops(fired, fanout)
            synops.append(used)
            saved = full_ops - used
        else:
            synops.append(count_ops(fired, fanout))
            z = ops.synaptic(a, node)
            if i == readout:
                logits = z.reshape(n, -1)
            else:
                scale = node.scale  # type: ignore[assignment]
                window += 1
                fired_times, times, clipped, sent = encode_population(z, scale, window, plan)
                saturated.append(clipped)
                spikes.append(sent)
                if record_spikes:
                    recorded.append(times)
                    recorded_fired.append(fired_times)
        layer += 1

    zero_skip = zero_skip_ops(graph, x, costs) if baselines else (0,) * len(costs)
    stats = RunStats(
        n_samples=n,
        populations=tuple(p.source for p in graph.populations),
        neurons=tuple(p.size for p in graph.populations),
        spikes=tuple(spikes),
        saturated=tuple(saturated),
        layers=tuple(node.name for node in graph.nodes if isinstance(node, SYNAPTIC_TYPES)),
        layer_synaptic_ops=tuple(synops),
        layer_dense_macs=tuple(n * cost.dense_macs for cost in costs),
        layer_zero_skip_ops=zero_skip,
        neuron_updates=n * sum(cost.neurons for cost in costs),
        readout_ops_saved=saved,
    )
    return EventResult(
        logits=np.asarray(logits, dtype=np.float32),
        stats=stats,
        times=tuple(recorded) if record_spikes else None,
        decision_times=decision_times,
        fired=tuple(recorded_fired) if record_spikes else None,
    )


def run_chunked(
    graph: Graph,
    x: np.ndarray,
    plan: Plan = FULL,
    *,
    chunk_size: int = 128,
    costs: tuple[SynapticCost, ...] | None = None,
    record_spikes: bool = False,
    baselines: bool = True,
    runner: Callable[..., EventResult] | None = None,
) -> EventResult:
    """``runner`` (default :func:`run_events`) over chunks of ``chunk_size`` samples, joined.

    Small chunks keep the temporaries (im2col columns above all) in cache: on the bundled CNN,
    chunks of 100 run three times faster than one batch of 2000, and memory stays bounded.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    costs = graph_costs(graph) if costs is None else costs
    runner = run_events if runner is None else runner
    parts = [
        runner(
            graph,
            x[i : i + chunk_size],
            plan,
            costs=costs,
            record_spikes=record_spikes,
            baselines=baselines,
        )
        for i in range(0, x.shape[0], chunk_size)
    ]

    def join(arrays: list[tuple[np.ndarray, ...] | None]) -> tuple[np.ndarray, ...] | None:
        if arrays[0] is None:
            return None
        return tuple(np.concatenate(group) for group in zip(*arrays, strict=True))  # type: ignore[misc]

    return EventResult(
        logits=np.concatenate([p.logits for p in parts]),
        stats=RunStats.merge([p.stats for p in parts]),
        times=join([p.times for p in parts]),
        decision_times=np.concatenate([p.decision_times for p in parts]),
        fired=join([p.fired for p in parts]),
    )


def _early_decision(
    times: np.ndarray,
    a: np.ndarray,
    node: Dense,
    fanout: np.ndarray,
    scale: float,
    window: int,
    margin: float,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Certified early decision of a Dense readout (DESIGN.md §2).

    The readout takes its input spikes in time order. After ``k`` of them the leader ``l`` leads
    rival ``r`` by ``D_r``; every input not yet arrived (including those that will never fire) is
    at most as intense as the last arrived one, ``a_now``, so it can still cut the lead by at
    most ``a_now * max(0, w_ir - w_il)``. Stop at the first ``k`` with
    ``D_r > (1 - margin) * a_now * sum_unarrived max(0, w_ir - w_il) + tol`` for every rival.
    With ``margin = 0`` the final lead is then provably positive: the prediction equals full
    processing. Before the first spike ``a_now`` is the scale ``A``.

    ``tol`` covers float32 rounding of the full pass: a float32 sum of ``H + 1`` terms is off by
    at most about ``(H + 1) * 2**-24`` times the sum of their magnitudes, here bounded by
    ``|b| + A * sum_i |w_i|`` (no intensity exceeds the scale ``A``) for the leader and the rival
    (taken twice for safety). A constant per class: a tighter bound that shrinks as spikes
    arrive would cost the compiled engine two running sums per arrival and moves the decisions
    of the bundled MLP by a fraction of a percent (docs/engine.md). Samples never certain take
    the full pass's own float32 logits, so their argmax is the full pass's by construction.

    Args:
        times, a: ``(N, H)`` spike times and decoded float32 intensities of the readout's inputs.
    Returns:
        the potentials at the decision ``(N, C)``, synaptic operations used, decision times.
    """
    n, h = times.shape
    w = node.weight.T.astype(np.float64)  # (H, C): row i is what input i adds to each class
    c = w.shape[1]
    bias = node.bias.astype(np.float64)
    # pos[i, l, r] = max(0, w_ir - w_il): how much input i can help rival r against leader l.
    pos = np.maximum(w[:, None, :] - w[:, :, None], 0.0)  # (H, C, C)
    total_pos = pos.sum(axis=0)  # (C, C)
    magnitude = np.abs(bias) + scale * np.abs(w).sum(axis=0)  # (C,)
    rounding = (h + 1) * 2.0**-23
    logits = ops.dense(a, node).astype(np.float64)  # the full pass, for the undecided
    decided_at = np.full(n, window + 1.0)
    used = 0
    # Samples per block: the prefix sums below hold block * (H + 1) * C * C floats.
    block = max(1, int(4e6 // ((h + 1) * c * c)))
    for s0 in range(0, n, block):
        t = times[s0 : s0 + block]
        m = t.shape[0]
        order = np.argsort(t, axis=1, kind="stable")  # (m, H), silent inputs last
        fired = np.isfinite(t).sum(axis=1)  # (m,)
        a_sorted = np.take_along_axis(a[s0 : s0 + block].astype(np.float64), order, axis=1)

        def prefix(x: np.ndarray) -> np.ndarray:
            """Sums over the first k arrivals, k = 0 … H, along axis 1."""
            return np.concatenate([np.zeros_like(x[:, :1]), x.cumsum(axis=1)], axis=1)

        potentials = bias + prefix(w[order] * a_sorted[..., None])  # (m, H + 1, C)
        leader = potentials.argmax(axis=2)  # (m, H + 1)
        rows = np.arange(m)[:, None]
        steps = np.arange(h + 1)[None, :]
        unarrived = total_pos[leader] - prefix(pos[order])[rows, steps, leader]  # (m, H+1, C)
        a_now = np.concatenate([np.full((m, 1), scale), a_sorted], axis=1)  # (m, H + 1)
        lead = np.take_along_axis(potentials, leader[..., None], axis=2) - potentials
        bound = (1.0 - margin) * a_now[..., None] * unarrived
        tolerance = rounding * (magnitude[leader][..., None] + magnitude)  # (m, H + 1, C)
        safe = lead > bound + tolerance
        np.put_along_axis(safe, leader[..., None], True, axis=2)
        # Steps past the last spike are not arrivals: the window's end decides those samples.
        certain = safe.all(axis=2) & (steps <= fired[:, None])
        decided = certain.any(axis=1)
        k = np.where(decided, certain.argmax(axis=1), fired)  # (m,)
        spent = prefix(fanout[order].astype(np.int64))  # (m, H + 1)
        used += int(spent[np.arange(m), k].sum())
        idx = np.flatnonzero(decided)
        logits[s0 + idx] = potentials[idx, k[idx]]
        sorted_times = np.take_along_axis(t, order, axis=1)
        last = sorted_times[idx, np.maximum(k[idx] - 1, 0)]
        decided_at[s0 + idx] = np.where(k[idx] > 0, last, float(window))
    return logits.astype(np.float32), used, decided_at
