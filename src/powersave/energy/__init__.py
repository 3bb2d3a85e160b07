"""Energy estimates from operation counts, with hardware profiles stored as data files.

Every figure is an **estimate** (labelled so): per-sample operation counts of a spiking run and of
its dense and zero-skipping baselines, times per-operation energies (pJ) of a named profile whose
numbers cite their sources. Memory reads are included. Measured wall-clock time is never mixed in.

>>> from powersave.energy import estimate
>>> counts = {"synaptic_ops": 1000, "spikes": 50, "neuron_updates": 110,
...           "dense_macs": 8000, "zero_skip_ops": 3000}
>>> estimate(counts, "cmos45-fp32").spiking_pj
6249.0
"""

from powersave.energy.estimate import (
    COMPONENTS,
    COUNT_KEYS,
    OPTIONAL_COUNT_KEYS,
    CountsError,
    EnergyEstimate,
    estimate,
    estimate_all,
)
from powersave.energy.profiles import (
    ENERGY_FIELDS,
    Profile,
    ProfileError,
    Source,
    available_profiles,
    load_profile,
    profile_from_dict,
)

__all__ = [
    "COMPONENTS",
    "COUNT_KEYS",
    "ENERGY_FIELDS",
    "OPTIONAL_COUNT_KEYS",
    "CountsError",
    "EnergyEstimate",
    "Profile",
    "ProfileError",
    "Source",
    "available_profiles",
    "estimate",
    "estimate_all",
    "load_profile",
    "profile_from_dict",
]
