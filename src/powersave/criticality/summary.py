"""All the diagnostics of one network on one data set, as a JSON-ready dict."""

from __future__ import annotations

from typing import Any

from powersave.criticality.avalanches import damage_spreading, fit_power_law
from powersave.criticality.diagnostics import branching_ratio, hidden_chi_geomean, layer_gains
from powersave.network import Network
from powersave.plan import Plan


def diagnose(
    network: Network,
    x: Any,
    *,
    mode: str | Plan = "full",
    chi_samples: int = 500,
    probes: int = 4,
    avalanche_samples: int = 50,
    per_sample: int = 32,
    perturbation: str = "delete",
    resolution: float = 2.0**-8,
    seed: int = 0,
    fit: bool = True,
) -> dict[str, Any]:
    """χ per layer, branching ratios, damage spreading and its power-law fit, in ``mode``.

    Args:
        network: the converted network.
        x: inputs ``(N, *input_shape)``; χ uses the first ``chi_samples``, damage spreading the
            first ``avalanche_samples`` (``per_sample`` input spikes each), the branching ratio
            all of them.
        mode: the mode to measure (its cut-offs count as part of the network).
        fit: fit a power law to the avalanche sizes (needs the ``powerlaw`` package).

    Returns:
        ``{"mode", "samples", "chi": [LayerGain dicts], "chi_hidden_geomean",
        "branching_ratio": [σ_ℓ], "spikes_per_sample": [per population], "avalanches":
        {summary, "fit": PowerLawFit dict or None}, "avalanche_exponent"}``.
    """
    batch = network.check_inputs(x)
    plan = network.plan(mode)
    gains = layer_gains(network, batch[:chi_samples], mode=plan, probes=probes, seed=seed)
    run = network.run(batch, plan, baselines=False)
    spikes = [s / run.stats.n_samples for s in run.stats.spikes]
    avalanches = damage_spreading(
        network,
        batch[:avalanche_samples],
        mode=plan,
        perturbation=perturbation,  # type: ignore[arg-type]
        resolution=resolution,
        per_sample=per_sample,
        seed=seed,
    )
    power_law = fit_power_law(avalanches.sizes) if fit else None
    return {
        "mode": plan.name or str(mode),
        "samples": int(batch.shape[0]),
        "chi": [g.to_dict() for g in gains],
        "chi_hidden_geomean": hidden_chi_geomean(gains),
        "branching_ratio": branching_ratio(spikes),
        "spikes_per_sample": spikes,
        "avalanches": {
            **avalanches.summary(),
            "fit": None if power_law is None else power_law.to_dict(),
        },
        "avalanche_exponent": None if power_law is None else power_law.alpha,
    }
