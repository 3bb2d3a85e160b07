"""Energy estimates: hand-computed values per profile, breakdowns, profile files and validation."""

from __future__ import annotations

import copy
import doctest
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import powersave.energy
from powersave.energy import (
    COMPONENTS,
    COUNT_KEYS,
    ENERGY_FIELDS,
    CountsError,
    EnergyEstimate,
    Profile,
    ProfileError,
    available_profiles,
    estimate,
    estimate_all,
    load_profile,
)

# Small per-sample counts, easy to multiply by hand.
COUNTS = {
    "synaptic_ops": 100.0,
    "spikes": 10.0,
    "neuron_updates": 20.0,
    "dense_macs": 1000.0,
    "zero_skip_ops": 400.0,
}


def _valid_profile() -> dict[str, Any]:
    """A user profile in fJ with round numbers (1 fJ = 0.001 pJ)."""
    energy = {
        "mac": 2000.0,
        "accumulate": 1000.0,
        "weight_read": 3000.0,
        "activation_read": 4000.0,
        "spike": 5000.0,
        "neuron_update": 6000.0,
    }
    return {
        "name": "my-chip",
        "description": "A test chip.",
        "kind": "digital",
        "units": "fJ",
        "energy": energy,
        "derivation": {key: f"measured {key} [lab]" for key in energy},
        "sources": [
            {
                "key": "lab",
                "citation": "Our lab notebook, 2024.",
                "used_for": list(energy),
                "detail": "Bench measurements.",
                "url": "https://example.org/notebook",
            }
        ],
        "caveats": ["Measured at room temperature."],
    }


def _write(tmp_path: Path, data: Any, name: str = "chip.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- bundled profiles -------------------------------------------------------------------------


def test_bundled_profiles_are_listed() -> None:
    assert available_profiles() == ["cmos45-fp32", "cmos45-int8", "loihi"]


@pytest.mark.parametrize("name", ["cmos45-fp32", "cmos45-int8", "loihi"])
def test_every_bundled_profile_validates_and_cites(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.units == "pJ"
    assert profile.kind in ("digital", "neuromorphic")
    assert set(profile.derivation) == set(ENERGY_FIELDS)
    keys = {source.key for source in profile.sources}
    for field in ENERGY_FIELDS:
        assert getattr(profile, field) >= 0
        # Every number says where it comes from: a cited source or a stated assumption.
        text = profile.derivation[field]
        assert any(f"[{key}]" in text for key in keys) or "ssumption" in text, field
        assert any(field in source.used_for for source in profile.sources), field
    assert profile.caveats
    assert all(source.citation for source in profile.sources)


def test_profile_round_trips_through_its_dict(tmp_path: Path) -> None:
    profile = load_profile("cmos45-int8")
    again = load_profile(_write(tmp_path, profile.to_dict()))
    assert again == profile
    assert again.path == str((tmp_path / "chip.json").resolve())


def test_horowitz_numbers() -> None:
    fp32, int8 = load_profile("cmos45-fp32"), load_profile("cmos45-int8")
    assert (fp32.mac, fp32.accumulate, fp32.weight_read) == pytest.approx((4.6, 0.9, 5.0))
    assert (int8.mac, int8.accumulate, int8.weight_read) == pytest.approx((0.23, 0.03, 1.25))


def test_loihi_numbers_and_caveats() -> None:
    loihi = load_profile("loihi")
    assert loihi.kind == "neuromorphic"
    assert (loihi.accumulate, loihi.neuron_update, loihi.spike) == pytest.approx((23.6, 52.0, 1.7))
    # The dense baseline costs each MAC as a synaptic op; the weight read is inside that figure.
    assert loihi.mac == loihi.accumulate
    assert loihi.weight_read == 0.0
    assert any("pre-silicon" in caveat for caveat in loihi.caveats)


# --- hand-computed estimates ------------------------------------------------------------------

# Per profile: (spiking, dense, zero_skip) in pJ for COUNTS, worked out by hand.
#   spiking   = 100·(acc + w) + 10·spike + 20·update
#   dense     = 1000·(mac + w) + 20·(act + update)   (neurons defaults to neuron_updates = 20)
#   zero_skip =  400·(mac + w) + 20·(act + update)
HAND = {
    # acc 0.9, mac 4.6, w 5, act 5, spike 5, update 0.9
    "cmos45-fp32": (
        100 * 5.9 + 10 * 5 + 20 * 0.9,  # 590 + 50 + 18 = 658
        1000 * 9.6 + 20 * 5.9,  # 9600 + 118 = 9718
        400 * 9.6 + 20 * 5.9,  # 3840 + 118 = 3958
    ),
    # acc 0.03, mac 0.23, w 1.25, act 1.25, spike 5, update 0.03
    "cmos45-int8": (
        100 * 1.28 + 10 * 5 + 20 * 0.03,  # 128 + 50 + 0.6 = 178.6
        1000 * 1.48 + 20 * 1.28,  # 1480 + 25.6 = 1505.6
        400 * 1.48 + 20 * 1.28,  # 592 + 25.6 = 617.6
    ),
    # acc 23.6, mac 23.6, w 0, act 1.7, spike 1.7, update 52
    "loihi": (
        100 * 23.6 + 10 * 1.7 + 20 * 52,  # 2360 + 17 + 1040 = 3417
        1000 * 23.6 + 20 * 53.7,  # 23600 + 1074 = 24674
        400 * 23.6 + 20 * 53.7,  # 9440 + 1074 = 10514
    ),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_computed_estimate(name: str) -> None:
    result = estimate(COUNTS, name)
    assert result.profile == name
    assert result.label == "estimate"
    assert (result.spiking_pj, result.dense_pj, result.zero_skip_pj) == pytest.approx(
        HAND[name], rel=1e-12
    )


def test_hand_computed_values_literal() -> None:
    assert HAND["cmos45-fp32"] == pytest.approx((658.0, 9718.0, 3958.0))
    assert HAND["cmos45-int8"] == pytest.approx((178.6, 1505.6, 617.6))
    assert HAND["loihi"] == pytest.approx((3417.0, 24674.0, 10514.0))


def test_fp32_breakdown_by_component() -> None:
    result = estimate(COUNTS, "cmos45-fp32")
    assert dict(result.spiking_breakdown) == pytest.approx(
        {
            "arithmetic": 90.0,
            "weight_reads": 500.0,
            "activation_reads": 0.0,
            "spikes": 50.0,
            "neuron_updates": 18.0,
        }
    )
    assert dict(result.dense_breakdown) == pytest.approx(
        {
            "arithmetic": 4600.0,
            "weight_reads": 5000.0,
            "activation_reads": 100.0,
            "spikes": 0.0,
            "neuron_updates": 18.0,
        }
    )
    assert dict(result.zero_skip_breakdown) == pytest.approx(
        {
            "arithmetic": 1840.0,
            "weight_reads": 2000.0,
            "activation_reads": 100.0,
            "spikes": 0.0,
            "neuron_updates": 18.0,
        }
    )


@pytest.mark.parametrize("name", ["cmos45-fp32", "cmos45-int8", "loihi"])
def test_breakdowns_sum_to_totals(name: str) -> None:
    result = estimate(COUNTS, name)
    for total, parts in (
        (result.spiking_pj, result.spiking_breakdown),
        (result.dense_pj, result.dense_breakdown),
        (result.zero_skip_pj, result.zero_skip_breakdown),
    ):
        assert tuple(parts) == COMPONENTS
        assert math.fsum(parts.values()) == total


def test_neurons_count_is_used_by_the_baselines_only() -> None:
    result = estimate({**COUNTS, "neurons": 30.0}, "cmos45-fp32")
    assert result.spiking_pj == pytest.approx(658.0)
    assert result.dense_pj == pytest.approx(1000 * 9.6 + 30 * 5.9)
    assert result.zero_skip_pj == pytest.approx(400 * 9.6 + 30 * 5.9)
    assert result.counts["neurons"] == 30.0


def test_zero_counts_cost_nothing() -> None:
    result = estimate(dict.fromkeys(COUNT_KEYS, 0), "loihi")
    assert (result.spiking_pj, result.dense_pj, result.zero_skip_pj) == (0.0, 0.0, 0.0)
    assert result.saving_vs_dense is None
    assert result.saving_vs_zero_skip is None


def test_numpy_scalars_and_extra_keys_are_accepted() -> None:
    counts = {key: np.float64(value) for key, value in COUNTS.items()}
    counts["spikes"] = np.int64(10)
    counts["spikes_per_layer"] = [1, 2, 3]  # other stats ride along, ignored
    assert estimate(counts, "cmos45-fp32").spiking_pj == pytest.approx(658.0)


def test_to_dict_is_json_and_labelled() -> None:
    result = estimate(COUNTS, "loihi")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["label"] == "estimate"
    assert data["units"] == "pJ per sample"
    assert data["profile"] == "loihi"
    assert data["spiking_pj"] == pytest.approx(3417.0)
    assert data["saving_vs_dense"] == pytest.approx(24674.0 / 3417.0)
    assert set(data["breakdown"]) == {"spiking", "dense", "zero_skip"}
    assert data["counts"]["neurons"] == 20.0
    assert any("Davies" in source for source in data["sources"])
    assert any("pre-silicon" in caveat for caveat in data["caveats"])


def test_estimate_is_frozen() -> None:
    result = estimate(COUNTS, "cmos45-fp32")
    assert isinstance(result, EnergyEstimate)
    with pytest.raises(AttributeError):
        result.spiking_pj = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.spiking_breakdown["spikes"] = 0.0  # type: ignore[index]


def test_estimate_all_covers_every_bundled_profile() -> None:
    results = estimate_all(COUNTS)
    assert list(results) == available_profiles()
    for name, result in results.items():
        assert result.spiking_pj == pytest.approx(HAND[name][0])


def test_estimate_all_with_chosen_profiles(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid_profile())
    results = estimate_all(COUNTS, [load_profile("loihi"), path])
    assert list(results) == ["loihi", "my-chip"]
    with pytest.raises(ProfileError, match="two profiles are named 'loihi'"):
        estimate_all(COUNTS, ["loihi", "loihi"])


@given(
    zero_skip=st.floats(0, 1e12),
    extra=st.floats(0, 1e12),
    syn=st.floats(0, 1e12),
    spikes=st.floats(0, 1e9),
    updates=st.floats(0, 1e9),
    name=st.sampled_from(["cmos45-fp32", "cmos45-int8", "loihi"]),
)
def test_dense_never_cheaper_than_zero_skip(
    zero_skip: float, extra: float, syn: float, spikes: float, updates: float, name: str
) -> None:
    counts = {
        "synaptic_ops": syn,
        "spikes": spikes,
        "neuron_updates": updates,
        "dense_macs": zero_skip + extra,
        "zero_skip_ops": zero_skip,
    }
    result = estimate(counts, name)
    assert result.dense_pj >= result.zero_skip_pj >= 0.0
    assert math.fsum(result.spiking_breakdown.values()) == result.spiking_pj


# --- user profiles ----------------------------------------------------------------------------


def test_user_profile_file_is_loaded_and_converted_to_pj(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid_profile())
    profile = load_profile(path)
    assert isinstance(profile, Profile)
    assert profile.name == "my-chip"
    assert profile.energies() == pytest.approx(
        {
            "mac": 2.0,
            "accumulate": 1.0,
            "weight_read": 3.0,
            "activation_read": 4.0,
            "spike": 5.0,
            "neuron_update": 6.0,
        }
    )
    assert profile.sources[0].url == "https://example.org/notebook"
    assert load_profile(str(path)) == profile
    # spiking = 100·(1 + 3) + 10·5 + 20·6 = 570; dense = 1000·(2 + 3) + 20·(4 + 6) = 5200
    result = estimate(COUNTS, path)
    assert result.profile == "my-chip"
    assert (result.spiking_pj, result.dense_pj, result.zero_skip_pj) == pytest.approx(
        (570.0, 5200.0, 2200.0)
    )


def test_unknown_profile_name() -> None:
    with pytest.raises(ProfileError, match=r"unknown energy profile 'tpu'.*cmos45-fp32"):
        load_profile("tpu")


def test_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"broken\.json: not valid JSON"):
        load_profile(path)


def test_file_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, [1, 2])
    with pytest.raises(ProfileError, match=r"chip\.json: a profile must be a JSON object"):
        load_profile(path)


def _broken(mutate: Any) -> dict[str, Any]:
    data = copy.deepcopy(_valid_profile())
    mutate(data)
    return data


# (how to break the profile, the error message expected: the file and field are named)
INVALID = {
    "missing top field": (lambda d: d.pop("sources"), r"missing field 'sources'"),
    "missing energy": (lambda d: d["energy"].pop("spike"), r"missing field 'energy\.spike'"),
    "missing derivation": (
        lambda d: d["derivation"].pop("mac"),
        r"missing field 'derivation\.mac'",
    ),
    "unknown top field": (
        lambda d: d.update(colour="red"),
        r"unknown field 'colour' \(allowed: name, ",
    ),
    "misspelt energy": (
        lambda d: d["energy"].update(weigth_read=1.0),
        r"unknown field 'energy\.weigth_read'",
    ),
    "negative energy": (
        lambda d: d["energy"].update(mac=-1.0),
        r"field 'energy\.mac' must be a finite, non-negative energy, got -1\.0",
    ),
    "string energy": (
        lambda d: d["energy"].update(spike="5 pJ"),
        r"field 'energy\.spike' must be a number .* got '5 pJ'",
    ),
    "boolean energy": (
        lambda d: d["energy"].update(spike=True),
        r"field 'energy\.spike' must be a number",
    ),
    "null energy": (
        lambda d: d["energy"].update(accumulate=None),
        r"field 'energy\.accumulate' must be a number",
    ),
    "energy not an object": (
        lambda d: d.update(energy=[1, 2]),
        r"field 'energy' must be a JSON object",
    ),
    "unknown unit": (
        lambda d: d.update(units="joules"),
        r"field 'units' must be one of \['fJ', 'pJ', 'nJ'\], got unknown unit 'joules'",
    ),
    "unknown kind": (
        lambda d: d.update(kind="analog"),
        r"field 'kind' must be one of \['digital', 'neuromorphic'\], got 'analog'",
    ),
    "empty name": (lambda d: d.update(name=""), r"field 'name' must be a non-empty string"),
    "empty derivation": (
        lambda d: d["derivation"].update(spike=" "),
        r"field 'derivation\.spike' must be a non-empty string",
    ),
    "no sources": (
        lambda d: d.update(sources=[]),
        r"field 'sources' must be a non-empty list of citations",
    ),
    "source not an object": (
        lambda d: d.update(sources=["Horowitz 2014"]),
        r"field 'sources\[0\]' must be a JSON object",
    ),
    "source without citation": (
        lambda d: d["sources"][0].pop("citation"),
        r"missing field 'sources\[0\]\.citation'",
    ),
    "source used for unknown field": (
        lambda d: d["sources"][0].update(used_for=["flops"]),
        r"field 'sources\[0\]\.used_for' names 'flops', which is not an energy field",
    ),
    "source used for nothing": (
        lambda d: d["sources"][0].update(used_for=[]),
        r"field 'sources\[0\]\.used_for' must be a non-empty list",
    ),
    "caveats not strings": (
        lambda d: d.update(caveats=[1]),
        r"field 'caveats' must be a list of strings",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_profile_file_names_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, message = INVALID[case]
    path = _write(tmp_path, _broken(mutate))
    with pytest.raises(ProfileError, match=rf"chip\.json: {message}"):
        load_profile(path)


def test_nan_energy_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "chip.json"
    text = json.dumps(_valid_profile()).replace('"mac": 2000.0', '"mac": NaN')
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError, match=r"field 'energy\.mac' must be a finite"):
        load_profile(path)


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)
    assert issubclass(CountsError, ValueError)


# --- counts validation ------------------------------------------------------------------------


def test_missing_count_is_named() -> None:
    counts = {k: v for k, v in COUNTS.items() if k != "zero_skip_ops"}
    with pytest.raises(CountsError, match=r"counts lack 'zero_skip_ops'"):
        estimate(counts, "cmos45-fp32")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1.0, "must be finite and non-negative"),
        (float("inf"), "must be finite and non-negative"),
        (float("nan"), "must be finite and non-negative"),
        ("12", "must be a number"),
        (True, "must be a number"),
        (None, "must be a number"),
    ],
)
def test_bad_count_is_named(value: Any, message: str) -> None:
    with pytest.raises(CountsError, match=rf"count 'spikes' {message}"):
        estimate({**COUNTS, "spikes": value}, "cmos45-fp32")


def test_counts_must_be_a_mapping() -> None:
    with pytest.raises(CountsError, match="counts must be a mapping"):
        estimate([1, 2, 3], "loihi")  # type: ignore[arg-type]


def test_module_docstring_example() -> None:
    failures, tried = doctest.testmod(powersave.energy, verbose=False)
    assert tried > 0
    assert failures == 0
