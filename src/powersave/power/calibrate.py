"""Calibrate power-saving modes: search per-population cut-offs to a target on held-out data.

The search is greedy. From ``full`` (every ``c_ℓ = 1``), each round tries lowering each
population's cut-off by one step and keeps the move that saves the most estimated energy per
sample of accuracy lost, among the moves that keep the target. When no move of the current step
size is allowed, the step is halved, down to ``min_step``. The certified early decision is then
switched on: it never changes a prediction, so it costs no accuracy, only saves readout operations.

Every candidate is measured on the calibration data with the event engine itself. To keep that
affordable, the pre-cut-off spike times of each population are cached per prefix of cut-offs,
and a candidate that changes population ℓ only reruns the network from population ℓ on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from powersave.coding import decode
from powersave.energy import estimate, load_profile
from powersave.engine.event import graph_costs, run_chunked
from powersave.graph.graph import Graph
from powersave.graph.nodes import Dense, Input
from powersave.network import Network
from powersave.plan import Plan


@dataclass(frozen=True)
class Target:
    """What a calibrated mode must satisfy: exactly one budget.

    Attributes:
        accuracy_loss_pp: the most accuracy (percentage points) the mode may lose against
            ``full`` on the calibration data; the search minimises estimated energy under it.
        synaptic_ops: a budget of synaptic operations per sample; the search reaches it while
            losing as little accuracy as it can.
        energy_pj: a budget of estimated energy per sample (pJ, in the calibration profile).
    """

    accuracy_loss_pp: float | None = None
    synaptic_ops: float | None = None
    energy_pj: float | None = None

    def __post_init__(self) -> None:
        given = [
            v for v in (self.accuracy_loss_pp, self.synaptic_ops, self.energy_pj) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a target takes exactly one of accuracy_loss_pp, synaptic_ops, energy_pj"
            )
        if not (np.isfinite(given[0]) and given[0] >= 0):
            raise ValueError(f"a target must be a finite number >= 0, got {given[0]}")

    def to_dict(self) -> dict[str, float]:
        return {
            k: v
            for k, v in (
                ("accuracy_loss_pp", self.accuracy_loss_pp),
                ("synaptic_ops", self.synaptic_ops),
                ("energy_pj", self.energy_pj),
            )
            if v is not None
        }


#: The standard modes of DESIGN.md §2.
DEFAULT_TARGETS: dict[str, Target] = {
    "balanced": Target(accuracy_loss_pp=0.5),
    "saver": Target(accuracy_loss_pp=2.0),
    "ultra": Target(accuracy_loss_pp=5.0),
}


@dataclass(frozen=True)
class Point:
    """One plan measured on the calibration data (per-sample means)."""

    cutoffs: tuple[float, ...]
    correct: int
    agreement: float
    synaptic_ops: float
    spikes: float
    energy_pj: float


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`: the network with its new modes, and how each was chosen."""

    network: Network
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluations: int = 0


class _Evaluator:
    """Measures plans on fixed calibration data, reusing work shared by plans' prefixes."""

    def __init__(
        self,
        graph: Graph,
        x: np.ndarray,
        labels: np.ndarray,
        energy: Callable[[dict[str, float]], float],
    ) -> None:
        self.graph = graph
        self.labels = labels
        self.n = x.shape[0]
        self.energy = energy
        self.pops = graph.populations
        self.cache: dict[tuple[float, ...], tuple[np.ndarray, int, int]] = {}
        self.points: dict[tuple[float, ...], Point] = {}
        self.suffixes = [self._suffix(k) for k in range(len(self.pops))]
        self.costs = [graph_costs(g) for g in self.suffixes]
        self.neurons = float(sum(c.neurons for c in self.costs[0]))  # suffix 0: the whole graph
        # Population 0 under the empty prefix: the input itself, nothing spent before it.
        self.cache[()] = (x, 0, 0)
        self.full_predictions = self._predict((1.0,) * len(self.pops))[0]
        self.full_correct = int(np.sum(self.full_predictions == labels))

    def _suffix(self, k: int) -> Graph:
        """The network from population ``k`` on, fed with that population's activations."""
        if k == 0:
            return self.graph
        pop = self.pops[k]
        names = [n.name for n in self.graph.nodes]
        at = names.index(pop.source)
        name = "_".join(["population", *names])  # unlike any node name after it
        return Graph((Input(name, pop.shape, pop.scale), *self.graph.nodes[at + 1 :]))

    def _predict(self, cutoffs: tuple[float, ...]) -> tuple[np.ndarray, dict[str, float]]:
        """Run ``cutoffs`` from the deepest cached prefix, caching what it passes on the way."""
        k = max(j for j in range(len(cutoffs)) if cutoffs[:j] in self.cache)
        inputs, prefix_ops, prefix_spikes = self.cache[cutoffs[:k]]
        result = run_chunked(
            self.suffixes[k],
            inputs,
            Plan(cutoffs=cutoffs[k:]),
            costs=self.costs[k],
            record_spikes=True,
            baselines=False,
        )
        stats = result.stats
        assert result.fired is not None and result.times is not None
        # Cache the pre-cut-off activations of every deeper population under this prefix.
        ops_so_far, spikes_so_far = prefix_ops, prefix_spikes
        for j in range(1, len(result.fired)):
            ops_so_far += stats.layer_synaptic_ops[j - 1]
            spikes_so_far += stats.spikes[j - 1]
            key = cutoffs[: k + j]
            if key not in self.cache:
                activations = decode(result.fired[j], self.pops[k + j].scale, j)
                self.cache[key] = (activations, ops_so_far, spikes_so_far)
        counts = {
            "synaptic_ops": (prefix_ops + stats.synaptic_ops) / self.n,
            "spikes": (prefix_spikes + stats.total_spikes) / self.n,
            "neuron_updates": self.neurons,
        }
        return result.logits.argmax(axis=1), counts

    def forget_all_but(self, cutoffs: tuple[float, ...]) -> None:
        """Drop cached activations that are not prefixes of ``cutoffs`` (memory: N × neurons each).

        The greedy search only ever branches from its current point, so the prefixes of that
        point are all it can reuse.
        """
        keep = {cutoffs[:k] for k in range(len(cutoffs) + 1)}
        for key in [k for k in self.cache if k not in keep]:
            del self.cache[key]

    def point(self, cutoffs: tuple[float, ...]) -> Point:
        """The plan ``cutoffs`` measured on the calibration data (memoised)."""
        if cutoffs not in self.points:
            predictions, counts = self._predict(cutoffs)
            self.points[cutoffs] = Point(
                cutoffs=cutoffs,
                correct=int(np.sum(predictions == self.labels)),
                agreement=float(np.mean(predictions == self.full_predictions)),
                synaptic_ops=counts["synaptic_ops"],
                spikes=counts["spikes"],
                energy_pj=self.energy(counts),
            )
        return self.points[cutoffs]

    def loss_pp(self, p: Point) -> float:
        """Accuracy lost against full on the calibration data, percentage points."""
        return 100.0 * (self.full_correct - p.correct) / self.n

    def loss_bound_pp(self, p: Point, z: float) -> float:
        """The loss plus ``z`` standard errors: guards the target against calibration noise.

        The loss counts samples where the mode and full disagree; with disagreement rate ``d``
        on ``n`` samples its standard error is about ``sqrt(d / n)``.
        """
        d = 1.0 - p.agreement
        return self.loss_pp(p) + 100.0 * z * float(np.sqrt(d / self.n))


def _greedy(
    ev: _Evaluator,
    target: Target,
    *,
    start_step: float,
    min_step: float,
    z: float,
    progress: tqdm | None,
    start: Point,
) -> Point:
    """Lower cut-offs one step at a time, best saving per accuracy lost first, within target."""
    current = start
    step = start_step

    def within(p: Point) -> bool:
        if target.accuracy_loss_pp is not None:
            return ev.loss_bound_pp(p, z) <= target.accuracy_loss_pp + 1e-9
        return True

    budget = target.accuracy_loss_pp is None  # a budget stops once met; accuracy goes on
    while step >= min_step - 1e-12 and not (budget and _reached(target, current)):
        best: tuple[float, Point] | None = None
        for k in range(len(ev.pops)):
            c = round(current.cutoffs[k] - step, 6)
            if c <= 0:
                continue
            candidate = ev.point((*current.cutoffs[:k], c, *current.cutoffs[k + 1 :]))
            if progress is not None:
                progress.update(1)
            saved = current.energy_pj - candidate.energy_pj
            if saved <= 0 or not within(candidate):
                continue
            lost = max(current.correct - candidate.correct, 0) + 0.5  # samples, smoothed
            score = saved / lost
            if best is None or score > best[0]:
                best = (score, candidate)
        if best is None:
            step /= 2
        else:
            current = best[1]
        ev.forget_all_but(current.cutoffs)
    return current


def _reached(target: Target, p: Point) -> bool:
    """Whether a budget target was met (accuracy targets hold by construction)."""
    if target.synaptic_ops is not None:
        return p.synaptic_ops <= target.synaptic_ops
    if target.energy_pj is not None:
        return p.energy_pj <= target.energy_pj
    return True


def calibrate(
    network: Network,
    inputs: Any,
    labels: Any,
    targets: Mapping[str, Target] | None = None,
    *,
    profile: str = "cmos45-fp32",
    early_decision: bool = True,
    start_step: float = 0.2,
    min_step: float = 0.025,
    confidence_z: float = 1.645,
    progress: bool = True,
) -> Calibration:
    """Find, for each target, the plan of cut-offs that minimises estimated energy within it.

    Args:
        network: the converted network.
        inputs, labels: held-out calibration data ``(N, *input_shape)`` and ``(N,)`` labels,
            disjoint from the data any figure will be quoted on.
        targets: mode name → :class:`Target`; defaults to ``balanced``/``saver``/``ultra``.
        profile: energy profile the search minimises (name or path of a profile file).
        early_decision: switch the certified early decision on in every mode.
        start_step, min_step: cut-off step sizes of the greedy search.
        confidence_z: an accuracy target must hold for the measured loss plus this many standard
            errors (about ``sqrt(disagreement / N)``; 1.645 is a one-sided 95 % bound), so that
            it still holds on new data; 0 takes the calibration data at its word.
        progress: show a progress bar.

    Returns:
        a :class:`Calibration` whose ``network`` carries the new modes (``net.run(x, mode=name)``)
        and whose ``modes`` say, per mode, the target and what it reached on the calibration data.
    """
    x = network.check_inputs(inputs)
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} calibration labels for {x.shape[0]} inputs")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    if not (0 < min_step <= start_step < 1):
        raise ValueError("need 0 < min_step <= start_step < 1")
    targets = dict(DEFAULT_TARGETS if targets is None else targets)
    if "full" in targets:
        raise ValueError("'full' is built in and drops nothing; choose another mode name")
    prof = load_profile(profile)
    # The certified early decision is defined for a Dense readout; a convolutional readout keeps
    # its cut-offs and decides at the end of its window.
    early_decision = early_decision and isinstance(network.graph.readout, Dense)

    def energy(counts: dict[str, float]) -> float:
        return estimate({**counts, "dense_macs": 0.0, "zero_skip_ops": 0.0}, prof).spiking_pj

    bar = tqdm(desc="calibrating modes", unit="plan", disable=not progress, leave=False)
    ev = _Evaluator(network.graph, x, y, energy)
    plans: dict[str, Plan] = {}
    report: dict[str, dict[str, Any]] = {}
    full = ev.point((1.0,) * len(ev.pops))
    # Accuracy targets from the tightest to the loosest, each search starting where the tighter
    # one stopped: a looser mode then never costs more than a tighter one.
    order = sorted(
        targets,
        key=lambda m: (targets[m].accuracy_loss_pp is None, targets[m].accuracy_loss_pp or 0.0),
    )
    previous = full
    for name in order:
        target = targets[name]
        bar.set_postfix_str(name)
        start = previous if target.accuracy_loss_pp is not None else full
        found = _greedy(
            ev,
            target,
            start_step=start_step,
            min_step=min_step,
            z=confidence_z,
            progress=bar,
            start=start,
        )
        if target.accuracy_loss_pp is not None:
            previous = found
        reached = _reached(target, found)
        if not reached:
            warnings.warn(
                f"mode {name!r}: the budget {target.to_dict()} was not reached; the cheapest "
                f"plan found uses {found.synaptic_ops:.0f} synaptic ops and "
                f"{found.energy_pj:.0f} pJ per sample",
                stacklevel=2,
            )
        plans[name] = Plan(cutoffs=found.cutoffs, early_decision=early_decision, name=name)
        report[name] = {
            "target": target.to_dict(),
            "reached": reached,
            "cutoffs": list(found.cutoffs),
            "early_decision": early_decision,
            "profile": prof.name,
            "calibration_samples": int(x.shape[0]),
            "calibration_accuracy": found.correct / ev.n,
            "calibration_full_accuracy": ev.full_correct / ev.n,
            "calibration_accuracy_loss_pp": ev.loss_pp(found),
            "calibration_loss_bound_pp": ev.loss_bound_pp(found, confidence_z),
            "calibration_agreement_with_full": found.agreement,
            "calibration_synaptic_ops_per_sample": found.synaptic_ops,
            "calibration_energy_pj_per_sample": found.energy_pj,
        }
    bar.close()
    metadata = dict(network.metadata)
    metadata["modes"] = {**dict(metadata.get("modes", {})), **report}
    calibrated = Network(network.graph, {**network.plans, **plans}, metadata)
    return Calibration(calibrated, report, evaluations=len(ev.points))
