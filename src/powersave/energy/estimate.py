"""Energy estimates: per-sample operation counts × per-operation energies of a profile.

Every figure here is an **estimate**, labelled so, in pJ per sample. With the counts of one
sample (means over samples) and a profile's energies (all in pJ):

.. code-block:: text

    spiking   = synaptic_ops  · (accumulate + weight_read)
              + spikes        · spike
              + neuron_updates · neuron_update
    dense     = dense_macs    · (mac + weight_read)
              + neurons       · (activation_read + neuron_update)
    zero_skip = zero_skip_ops · (mac + weight_read)
              + neurons       · (activation_read + neuron_update)

A synaptic operation (a spike through a non-zero weight) needs only an add: the spike's intensity
is in its timing, the weight is the current it starts. A zero-skipping accelerator still needs a
multiply for each non-zero activation, which is a real value. Both baselines read each computed
activation once and update each neuron once (``neurons``, the spiking run's ``neuron_updates``
unless given), the same neurons the spiking run updates. Memory reads are always included:
they dominate, and leaving them out would flatter spikes.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from powersave.energy.profiles import Profile, ProfileError, available_profiles, load_profile
from powersave.errors import PowersaveError

COUNT_KEYS: tuple[str, ...] = (
    "synaptic_ops",
    "spikes",
    "neuron_updates",
    "dense_macs",
    "zero_skip_ops",
)
"""Counts :func:`estimate` requires, each a per-sample mean."""

OPTIONAL_COUNT_KEYS: tuple[str, ...] = ("neurons",)
"""Counts :func:`estimate` uses when given: ``neurons`` computed by the baselines per sample."""

COMPONENTS: tuple[str, ...] = (
    "arithmetic",
    "weight_reads",
    "activation_reads",
    "spikes",
    "neuron_updates",
)
"""The parts each estimate is split into (the same keys for the spiking run and both baselines)."""

LABEL = "estimate"


class CountsError(PowersaveError, ValueError):
    """Operation counts given to :func:`estimate` are missing or not non-negative numbers."""


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated energy per sample, in pJ, of a spiking run and its two baselines on one profile.

    Attributes:
        profile: the profile's name.
        spiking_pj: the event-driven spiking run, pJ per sample.
        dense_pj: the dense baseline (every multiply-accumulate), pJ per sample.
        zero_skip_pj: the zero-skipping baseline (MACs of non-zero activations only), pJ per
            sample.
        spiking_breakdown: ``spiking_pj`` split into :data:`COMPONENTS`, pJ per sample; the
            parts sum to the total.
        dense_breakdown: the same for ``dense_pj``.
        zero_skip_breakdown: the same for ``zero_skip_pj``.
        counts: the per-sample counts the estimate was computed from.
        sources: citations of the profile's sources.
        caveats: the profile's caveats.
        label: always ``"estimate"``: these are not measurements.
        units: always ``"pJ per sample"``.
    """

    profile: str
    spiking_pj: float
    dense_pj: float
    zero_skip_pj: float
    spiking_breakdown: Mapping[str, float] = field(hash=False)
    dense_breakdown: Mapping[str, float] = field(hash=False)
    zero_skip_breakdown: Mapping[str, float] = field(hash=False)
    counts: Mapping[str, float] = field(hash=False)
    sources: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()
    label: str = LABEL
    units: str = "pJ per sample"

    @property
    def saving_vs_dense(self) -> float | None:
        """``dense_pj / spiking_pj`` (above 1: spikes cheaper); None when the spiking run is 0."""
        return _ratio(self.dense_pj, self.spiking_pj)

    @property
    def saving_vs_zero_skip(self) -> float | None:
        """``zero_skip_pj / spiking_pj``; None when the spiking run costs 0 pJ."""
        return _ratio(self.zero_skip_pj, self.spiking_pj)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: totals, breakdowns, the counts used, sources and caveats."""
        return {
            "label": self.label,
            "profile": self.profile,
            "units": self.units,
            "spiking_pj": self.spiking_pj,
            "dense_pj": self.dense_pj,
            "zero_skip_pj": self.zero_skip_pj,
            "saving_vs_dense": self.saving_vs_dense,
            "saving_vs_zero_skip": self.saving_vs_zero_skip,
            "breakdown": {
                "spiking": dict(self.spiking_breakdown),
                "dense": dict(self.dense_breakdown),
                "zero_skip": dict(self.zero_skip_breakdown),
            },
            "counts": dict(self.counts),
            "sources": list(self.sources),
            "caveats": list(self.caveats),
        }


def estimate(
    counts: Mapping[str, Any], profile: Profile | str | os.PathLike[str]
) -> EnergyEstimate:
    """Estimate the energy per sample of a spiking run and its baselines on one profile.

    Args:
        counts: per-sample means (operations per sample) with keys :data:`COUNT_KEYS` —
            ``synaptic_ops``, ``spikes``, ``neuron_updates`` of the event-driven run,
            ``dense_macs`` and ``zero_skip_ops`` of the baselines — and optionally ``neurons``,
            the neurons the baselines compute (default: ``neuron_updates``). Other keys are
            ignored.
        profile: a :class:`Profile`, a bundled profile's name or a profile file's path.

    Returns:
        The estimate in pJ per sample, with each total split into :data:`COMPONENTS`.

    Raises:
        CountsError: a required count is missing, or a count is not a finite number ≥ 0.
        ProfileError: the profile cannot be loaded.
    """
    prof = load_profile(profile)
    used = _checked_counts(counts)
    syn, spikes, updates = used["synaptic_ops"], used["spikes"], used["neuron_updates"]
    neurons = used["neurons"]

    spiking = _breakdown(
        arithmetic=syn * prof.accumulate,
        weight_reads=syn * prof.weight_read,
        activation_reads=0.0,
        spikes=spikes * prof.spike,
        neuron_updates=updates * prof.neuron_update,
    )
    dense = _baseline(used["dense_macs"], neurons, prof)
    zero_skip = _baseline(used["zero_skip_ops"], neurons, prof)
    return EnergyEstimate(
        profile=prof.name,
        spiking_pj=math.fsum(spiking.values()),
        dense_pj=math.fsum(dense.values()),
        zero_skip_pj=math.fsum(zero_skip.values()),
        spiking_breakdown=spiking,
        dense_breakdown=dense,
        zero_skip_breakdown=zero_skip,
        counts=MappingProxyType(used),
        sources=tuple(s.citation for s in prof.sources),
        caveats=prof.caveats,
    )


def estimate_all(
    counts: Mapping[str, Any],
    profiles: Iterable[Profile | str | os.PathLike[str]] | None = None,
) -> dict[str, EnergyEstimate]:
    """Estimates on several profiles: profile name → :class:`EnergyEstimate`.

    Args:
        counts: per-sample counts, as for :func:`estimate`.
        profiles: profiles, names or paths; default: every bundled profile.

    Raises:
        ProfileError: two profiles share a name, or one cannot be loaded.
    """
    chosen = available_profiles() if profiles is None else list(profiles)
    out: dict[str, EnergyEstimate] = {}
    for item in chosen:
        result = estimate(counts, item)
        if result.profile in out:
            raise ProfileError(
                f"two profiles are named {result.profile!r}: rename one (field 'name')"
            )
        out[result.profile] = result
    return out


def _baseline(ops: float, neurons: float, prof: Profile) -> Mapping[str, float]:
    """Breakdown of a MAC-based baseline: ``ops`` MACs and ``neurons`` computed activations."""
    return _breakdown(
        arithmetic=ops * prof.mac,
        weight_reads=ops * prof.weight_read,
        activation_reads=neurons * prof.activation_read,
        spikes=0.0,
        neuron_updates=neurons * prof.neuron_update,
    )


def _breakdown(**parts: float) -> Mapping[str, float]:
    return MappingProxyType({key: float(parts[key]) for key in COMPONENTS})


def _checked_counts(counts: Mapping[str, Any]) -> dict[str, float]:
    """The counts :func:`estimate` uses, as floats, with ``neurons`` filled in."""
    if not isinstance(counts, Mapping):
        raise CountsError(
            "counts must be a mapping of count name to per-sample mean, "
            f"got {type(counts).__name__}"
        )
    missing = [key for key in COUNT_KEYS if key not in counts]
    if missing:
        raise CountsError(
            f"counts lack {', '.join(repr(k) for k in missing)}: an estimate needs the per-sample "
            f"means of {', '.join(COUNT_KEYS)}"
        )
    used = {key: _count(counts[key], key) for key in COUNT_KEYS}
    if "neurons" in counts:
        used["neurons"] = _count(counts["neurons"], "neurons")
    else:
        used["neurons"] = used["neuron_updates"]
    return used


def _count(value: Any, key: str) -> float:
    # Accept Python and numpy scalars; bool and str are not counts.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CountsError(f"count {key!r} must be a number (per-sample mean), got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise CountsError(f"count {key!r} must be finite and non-negative, got {value!r}")
    return number


def _ratio(baseline: float, spiking: float) -> float | None:
    return baseline / spiking if spiking > 0 else None
