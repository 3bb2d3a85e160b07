"""Damage spreading: move or delete one input spike, count the downstream spikes that change.

For a sample and one of the input spikes it sends, the perturbed input is run through the event
engine next to the unperturbed one; the **avalanche size** is the number of hidden spikes whose
time changed by more than a resolution ``δt`` (a spike that appears or disappears counts as
changed). Near a critical point the sizes follow a power law ``P(s) ∝ s^(−α)``; the fit is the
maximum-likelihood one of Clauset, Shalizi & Newman (2009) as implemented by the maintained
``powerlaw`` package (Alstott et al. 2014), with its goodness of fit against an exponential and a
lognormal (log-likelihood ratio R > 0 favours the power law; p is the significance of the sign).
``powerlaw`` is imported only by :func:`fit_power_law` (it pulls in matplotlib and scipy).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from powersave.coding import split_on_off
from powersave.criticality.diagnostics import branching_ratio
from powersave.engine.event import run_chunked
from powersave.graph.graph import Graph
from powersave.graph.nodes import Input
from powersave.network import Network
from powersave.plan import Plan

#: Below this a change of spike time is float rounding, whatever resolution is asked for.
_FLOAT_FLOOR = 1e-5


@dataclass(frozen=True)
class Avalanches:
    """Damage-spreading events: one per perturbed input spike.

    Attributes:
        sizes: ``(E,)`` hidden spikes changed per event (the avalanche sizes).
        layer_sizes: ``(E, P − 1)`` the same, per hidden population.
        prediction_changed: ``(E,)`` whether the perturbation changed the predicted class.
        perturbation: ``"delete"`` (the spike is removed) or ``"move"`` (delayed by ``shift``).
        shift: the delay of a moved spike, in windows (intensity lowered by ``shift · A_0``;
            a spike moved past its window's end is deleted).
        resolution: the smallest change of spike time counted, in windows.
        mode: the mode the network ran in.
        samples: inputs perturbed.
    """

    sizes: np.ndarray
    layer_sizes: np.ndarray
    prediction_changed: np.ndarray
    perturbation: str
    shift: float
    resolution: float
    mode: str
    samples: int

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct sizes (ascending) and how many events had each."""
        values, counts = np.unique(self.sizes, return_counts=True)
        return values, counts

    def damage_branching_ratio(self) -> list[float | None]:
        """Changed spikes in population ℓ + 1 per changed spike in population ℓ (totals).

        The first entry is per perturbed input spike (one per event).
        """
        return branching_ratio([len(self.sizes), *self.layer_sizes.sum(axis=0)])

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: the distribution and the damage branching ratios."""
        values, counts = self.histogram()
        n = len(self.sizes)
        return {
            "perturbation": self.perturbation,
            "shift": self.shift,
            "resolution": self.resolution,
            "mode": self.mode,
            "samples": self.samples,
            "events": n,
            "zero_share": float(np.mean(self.sizes == 0)) if n else 0.0,
            "mean_size": float(self.sizes.mean()) if n else 0.0,
            "max_size": int(self.sizes.max()) if n else 0,
            "prediction_changed_share": float(self.prediction_changed.mean()) if n else 0.0,
            "damage_branching_ratio": self.damage_branching_ratio(),
            "histogram": {"size": values.tolist(), "count": counts.tolist()},
        }


def _population_graph(graph: Graph) -> Graph:
    """``graph`` fed directly with population 0 (the ON/OFF split already done), unsigned."""
    if not graph.input.signed:
        return graph
    first = graph.input
    return Graph((Input(first.name, first.population_shape, first.scale), *graph.nodes[1:]))


def damage_spreading(
    network: Network,
    x: Any,
    *,
    mode: str | Plan = "full",
    perturbation: Literal["delete", "move"] = "delete",
    shift: float = 0.1,
    resolution: float = 2.0**-8,
    per_sample: int = 32,
    seed: int = 0,
    chunk_size: int = 128,
) -> Avalanches:
    """Perturb single input spikes of each sample of ``x`` and count the changed hidden spikes.

    Args:
        network: the converted network.
        x: inputs ``(N, *input_shape)``; each is perturbed up to ``per_sample`` times.
        mode: the mode to run in (its cut-offs decide which input spikes are sent and which
            downstream spikes exist).
        perturbation: ``"delete"`` removes the spike; ``"move"`` delays it by ``shift``.
        shift: delay of a moved spike in windows, in ``(0, 1]``.
        resolution: a spike time that changes by at most this (in windows) counts as unchanged;
            the default, one step of an 8-bit time code, ignores changes no 8-bit hardware could
            see. Changes below float rounding (1e-5) never count.
        per_sample: at most this many of a sample's input spikes are perturbed (chosen at random
            without replacement; all of them when it sends fewer).
        seed: seeds that choice.
        chunk_size: samples per engine chunk.
    """
    if perturbation not in ("delete", "move"):
        raise ValueError(f"perturbation must be 'delete' or 'move', got {perturbation!r}")
    if not (0 < shift <= 1) or resolution < 0 or per_sample < 1:
        raise ValueError(
            f"need 0 < shift <= 1, resolution >= 0 and per_sample >= 1, got {shift}, "
            f"{resolution}, {per_sample}"
        )
    graph = _population_graph(network.graph)
    plan = network.plan(mode)
    batch = network.check_inputs(x)
    a0 = split_on_off(batch, network.graph.input.signed)  # (N, *population 0 shape)
    scale = graph.input.scale
    reference = run_chunked(graph, a0, plan, record_spikes=True, baselines=False)
    assert reference.times is not None
    rng = np.random.default_rng(seed)

    rows, owners, targets = [], [], []
    for s in range(a0.shape[0]):
        sent = np.flatnonzero(np.isfinite(reference.times[0][s].reshape(-1)))
        if sent.size == 0:
            continue
        chosen = rng.choice(sent, size=min(per_sample, sent.size), replace=False)
        for index in np.sort(chosen):
            row = a0[s].reshape(-1).copy()
            row[index] = 0.0 if perturbation == "delete" else max(row[index] - shift * scale, 0.0)
            rows.append(row.reshape(a0.shape[1:]))
            owners.append(s)
            targets.append(index)
    n_hidden = len(graph.populations) - 1
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return Avalanches(
            empty,
            np.zeros((0, n_hidden), np.int64),
            np.zeros(0, bool),
            perturbation,
            shift,
            resolution,
            plan.name or str(mode),
            int(a0.shape[0]),
        )
    perturbed = run_chunked(
        graph, np.stack(rows), plan, chunk_size=chunk_size, record_spikes=True, baselines=False
    )
    assert perturbed.times is not None
    owner = np.asarray(owners)
    tolerance = max(resolution, _FLOAT_FLOOR)
    layer_sizes = np.zeros((len(rows), n_hidden), dtype=np.int64)
    for k in range(n_hidden):
        after = perturbed.times[k + 1].reshape(len(rows), -1)
        before = reference.times[k + 1].reshape(a0.shape[0], -1)[owner]
        fin_a, fin_b = np.isfinite(after), np.isfinite(before)
        with np.errstate(invalid="ignore"):
            moved = fin_a & fin_b & (np.abs(after - before) > tolerance)
        layer_sizes[:, k] = (moved | (fin_a != fin_b)).sum(axis=1)
    changed = perturbed.logits.argmax(axis=1) != reference.logits.argmax(axis=1)[owner]
    return Avalanches(
        sizes=layer_sizes.sum(axis=1),
        layer_sizes=layer_sizes,
        prediction_changed=changed,
        perturbation=perturbation,
        shift=shift,
        resolution=resolution,
        mode=plan.name or str(mode),
        samples=int(a0.shape[0]),
    )


@dataclass(frozen=True)
class PowerLawFit:
    """A maximum-likelihood power-law fit of avalanche sizes and its goodness of fit.

    Attributes:
        alpha: the exponent α of ``P(s) ∝ s^(−α)`` for ``s ≥ xmin`` (the avalanche exponent).
        sigma: its standard error.
        xmin: the lower end of the fitted tail (chosen by minimising the KS distance unless
            given).
        n_tail: events with ``size ≥ xmin``; n: positive sizes given.
        ks_distance: Kolmogorov–Smirnov distance of the fit on the tail.
        vs_exponential, vs_lognormal: ``{"R": log-likelihood ratio, "p": significance}``;
            R > 0 favours the power law, R < 0 the alternative, and a large p (say > 0.1)
            means the data cannot tell them apart.
    """

    alpha: float
    sigma: float
    xmin: float
    n_tail: int
    n: int
    ks_distance: float
    vs_exponential: dict[str, float]
    vs_lognormal: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


def fit_power_law(
    sizes: Any, *, xmin: float | None = None, min_events: int = 10
) -> PowerLawFit | None:
    """Fit a discrete power law to the positive ``sizes`` with the ``powerlaw`` package.

    Args:
        sizes: avalanche sizes (zeros, i.e. perturbations that changed nothing, are left out:
            a power law has no mass at 0).
        xmin: the tail's lower end; None lets the package choose it (Clauset et al.).
        min_events: below this many positive sizes, or with a single distinct size, there is
            nothing to fit and None is returned.

    Raises:
        ImportError: ``powerlaw`` is not installed (``pip install powerlaw``).
    """
    values = np.asarray(sizes, dtype=float).reshape(-1)
    values = values[values > 0]
    if values.size < min_events or np.unique(values).size < 2:
        return None
    try:
        import powerlaw
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fitting avalanche sizes needs the 'powerlaw' package: pip install powerlaw "
            "(or powersave[criticality])"
        ) from error
    # powerlaw reports progress on stdout and warns on degenerate likelihoods: keep both quiet,
    # the fit's figures say what there is to say.
    with (
        warnings.catch_warnings(),
        np.errstate(all="ignore"),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(values, discrete=True, xmin=xmin, verbose=0)
        r_exp, p_exp = fit.distribution_compare("power_law", "exponential")
        r_log, p_log = fit.distribution_compare("power_law", "lognormal")
        law = fit.power_law
        return PowerLawFit(
            alpha=_finite(law.alpha),
            sigma=_finite(law.sigma),
            xmin=_finite(law.xmin),
            n_tail=int(np.sum(values >= law.xmin)),
            n=int(values.size),
            ks_distance=_finite(law.D),
            vs_exponential={"R": _finite(r_exp), "p": _finite(p_exp)},
            vs_lognormal={"R": _finite(r_log), "p": _finite(p_log)},
        )
