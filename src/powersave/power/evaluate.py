"""Evaluate modes on labelled data: accuracy, agreement with full, counts, energy, time.

The records these functions return are the ``modes`` and ``baselines`` entries of the demo's
``results.json`` (schema in ``docs/results.md``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from powersave.energy import Profile, estimate, load_profile
from powersave.engine import dense as dense_pass
from powersave.graph.nodes import Dense
from powersave.network import Network, Run
from powersave.plan import Plan


def _energies(counts: dict[str, float], profiles: Sequence[Profile]) -> dict[str, Any]:
    return {p.name: estimate(counts, p) for p in profiles}


def mode_record(
    run: Run, full: Run, labels: np.ndarray, plan: Plan, profiles: Sequence[Profile]
) -> dict[str, Any]:
    """One mode's row: what it got right, what it cost, per sample."""
    s = run.stats
    counts = {**s.per_sample_counts(), "zero_skip_ops": full.stats.zero_skip_ops_per_sample}
    energy = _energies(counts, profiles)
    return {
        "name": run.mode,
        "accuracy": run.accuracy(labels),
        "agreement_with_full": float(np.mean(run.predictions == full.predictions)),
        "synaptic_ops_per_sample": s.synaptic_ops_per_sample,
        "dense_macs_per_sample": s.dense_macs_per_sample,
        "zero_skip_ops_per_sample": full.stats.zero_skip_ops_per_sample,
        "spikes_per_neuron": s.spikes_per_neuron,
        "spikes_per_hidden_neuron": s.spikes_per_hidden_neuron,
        "energy_pj_per_sample": {name: e.spiking_pj for name, e in energy.items()},
        "seconds_per_sample": run.seconds / s.n_samples,
        "cutoffs": list(plan.cutoffs) or [1.0] * len(s.populations),
        "early_decision": plan.early_decision,
        "readout_ops_saved_per_sample": s.readout_ops_saved / s.n_samples,
        "populations": [
            {key: p[key] for key in ("name", "neurons", "spikes_per_sample", "spikes_per_neuron")}
            for p in s.to_dict()["populations"]
        ],
    }


def full_run(network: Network, x: np.ndarray) -> Run:
    """``network.run(x, "full")`` with the kernels loaded (or compiled) beforehand, so that
    its measured time is the inference's alone."""
    network.run(x[:2], "full", baselines=False)
    return network.run(x, "full")


def evaluate(
    network: Network,
    inputs: Any,
    labels: Any,
    modes: Sequence[str] | None = None,
    profiles: Sequence[str] = ("cmos45-fp32", "cmos45-int8", "loihi"),
    *,
    full: Run | None = None,
) -> dict[str, Any]:
    """Run ``full``, each mode, and both baselines on ``inputs``; return the records.

    ``full`` may pass a run of mode ``full`` on the same inputs (with baselines) to reuse it.

    Returns:
        ``{"baselines": {"dense": ..., "zero_skip": ...}, "modes": [...],
        "early_decision_alone": ...}`` with per-sample figures; energy per profile.
    """
    x = network.check_inputs(inputs)
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} inputs")
    profs = [load_profile(p) for p in profiles]
    modes = list(network.modes if modes is None else modes)
    if full is None or full.stats.n_samples != x.shape[0] or full.mode != "full":
        full = full_run(network, x)

    start = time.perf_counter()
    ann = dense_pass.forward(network.graph, x)
    dense_seconds = time.perf_counter() - start
    ann_accuracy = float(np.mean(ann.logits.argmax(axis=1) == y))
    counts = full.stats.per_sample_counts()
    energy = _energies(counts, profs)
    baselines = {
        "dense": {
            "accuracy": ann_accuracy,
            "dense_macs_per_sample": full.stats.dense_macs_per_sample,
            "energy_pj_per_sample": {n: e.dense_pj for n, e in energy.items()},
            "seconds_per_sample": dense_seconds / x.shape[0],
        },
        "zero_skip": {
            "accuracy": ann_accuracy,
            "zero_skip_ops_per_sample": full.stats.zero_skip_ops_per_sample,
            "energy_pj_per_sample": {n: e.zero_skip_pj for n, e in energy.items()},
        },
    }
    records = []
    for name in modes:
        plan = network.plan(name)
        # The zero-skipping baseline depends on the inputs, not the mode: count it once.
        run = full if name == "full" else network.run(x, name, baselines=False)
        records.append(mode_record(run, full, y, plan, profs))

    early_alone = None  # the early decision needs a Dense readout
    if isinstance(network.graph.readout, Dense):
        early = network.run(x, Plan(early_decision=True, name="full+early"), baselines=False)
        readout_full = full.stats.layer_synaptic_ops[-1] / x.shape[0]
        readout_early = early.stats.layer_synaptic_ops[-1] / x.shape[0]
        early_alone = {
            "changed_predictions": int(np.sum(early.predictions != full.predictions)),
            "readout_ops_per_sample_full": readout_full,
            "readout_ops_per_sample_early": readout_early,
            "readout_ops_saved_share": 1.0 - readout_early / readout_full if readout_full else 0.0,
        }
    return {"baselines": baselines, "modes": records, "early_decision_alone": early_alone}


def sweep(
    network: Network,
    inputs: Any,
    labels: Any,
    cutoffs: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
    profiles: Sequence[str] = ("cmos45-fp32", "cmos45-int8", "loihi"),
    *,
    early_decision: bool = False,
) -> list[dict[str, Any]]:
    """One uniform cut-off ``c`` for every population, for each ``c``: the trade-off curve."""
    x = network.check_inputs(inputs)
    y = np.asarray(labels).reshape(-1)
    profs = [load_profile(p) for p in profiles]
    rows = []
    for c in cutoffs:
        plan = Plan(cutoffs=(c,) * network.graph.n_windows, early_decision=early_decision)
        run = network.run(x, plan, baselines=False)
        energy = _energies(run.stats.per_sample_counts(), profs)
        rows.append(
            {
                "cutoff": float(c),
                "accuracy": run.accuracy(y),
                "synaptic_ops_per_sample": run.stats.synaptic_ops_per_sample,
                "energy_pj_per_sample": {n: e.spiking_pj for n, e in energy.items()},
            }
        )
    return rows
