"""Hardware energy profiles: per-operation energies in pJ, stored as JSON files with their sources.

A profile file has this schema (every field required, no others allowed)::

    {
      "name": "cmos45-fp32",
      "description": "what hardware this models",
      "kind": "digital" | "neuromorphic",
      "units": "pJ" | "fJ" | "nJ",
      "energy": {"mac": 4.6, "accumulate": 0.9, "weight_read": 5.0,
                 "activation_read": 5.0, "spike": 5.0, "neuron_update": 0.9},
      "derivation": {"mac": "how 4.6 was obtained, citing [key]", ...one per energy...},
      "sources": [{"key": "horowitz2014", "citation": "...", "used_for": ["mac", ...],
                   "detail": "the figures taken from it", "doi": "optional", "url": "optional"}],
      "caveats": ["what the numbers leave out", ...]
    }

The energies, per operation:

- ``mac``: one multiply-accumulate (a multiply and an add), the arithmetic of the baselines;
- ``accumulate``: one add, the arithmetic of a synaptic operation;
- ``weight_read``: reading one weight from on-chip memory;
- ``activation_read``: reading one activation value in the baselines;
- ``spike``: moving one spike (one address event);
- ``neuron_update``: one neuron's update for one inference.

They are converted to pJ on loading, whatever ``units`` the file uses. The bundled profiles live in
``powersave/energy/profiles/*.json``; :func:`load_profile` also reads any file with this schema.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType
from typing import Any

from powersave.errors import PowersaveError

ENERGY_FIELDS: tuple[str, ...] = (
    "mac",
    "accumulate",
    "weight_read",
    "activation_read",
    "spike",
    "neuron_update",
)
"""The per-operation energies every profile gives, in this order."""

KINDS: tuple[str, ...] = ("digital", "neuromorphic")

UNITS_TO_PJ: Mapping[str, float] = MappingProxyType({"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3})
"""Accepted ``units`` and the factor that converts each to pJ."""

_TOP_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "kind",
    "units",
    "energy",
    "derivation",
    "sources",
    "caveats",
)
_SOURCE_FIELDS: tuple[str, ...] = ("key", "citation", "used_for", "detail")
_SOURCE_OPTIONAL: tuple[str, ...] = ("doi", "url")


class ProfileError(PowersaveError, ValueError):
    """An energy profile is unknown, unreadable or does not follow the schema."""


@dataclass(frozen=True)
class Source:
    """One publication a profile takes numbers from.

    Attributes:
        key: short label that the derivations cite as ``[key]``.
        citation: full reference (authors, title, venue, year).
        used_for: the energy fields whose values come (directly or derived) from it.
        detail: the figures taken from it, as the publication gives them.
        doi: DOI, when it has one.
        url: address, when it has one.
    """

    key: str
    citation: str
    used_for: tuple[str, ...]
    detail: str
    doi: str | None = None
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The source as it is written in a profile file."""
        out: dict[str, Any] = {
            "key": self.key,
            "citation": self.citation,
            "used_for": list(self.used_for),
            "detail": self.detail,
        }
        if self.doi is not None:
            out["doi"] = self.doi
        if self.url is not None:
            out["url"] = self.url
        return out


@dataclass(frozen=True)
class Profile:
    """Per-operation energies of one kind of hardware, in pJ, with where they come from.

    Attributes:
        name: the profile's name, e.g. ``"cmos45-fp32"``.
        description: what hardware it models.
        kind: ``"digital"`` or ``"neuromorphic"``.
        mac: pJ per multiply-accumulate (one multiply and one add).
        accumulate: pJ per add, the arithmetic of one synaptic operation.
        weight_read: pJ per weight read from on-chip memory.
        activation_read: pJ per activation read in the dense and zero-skipping baselines.
        spike: pJ per spike (address event) moved.
        neuron_update: pJ per neuron update (one per neuron per inference).
        derivation: for each energy field, how its value was obtained.
        sources: the publications cited by the derivations.
        caveats: what the numbers leave out or assume.
        path: the file the profile was read from, if any.
    """

    name: str
    description: str
    kind: str
    mac: float
    accumulate: float
    weight_read: float
    activation_read: float
    spike: float
    neuron_update: float
    derivation: Mapping[str, str] = field(hash=False)
    sources: tuple[Source, ...]
    caveats: tuple[str, ...]
    path: str | None = field(default=None, compare=False)

    @property
    def units(self) -> str:
        """The unit of every energy attribute: always ``"pJ"`` (files in fJ or nJ are converted)."""
        return "pJ"

    def energies(self) -> dict[str, float]:
        """The per-operation energies, field name → pJ."""
        return {name: float(getattr(self, name)) for name in ENERGY_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """The profile in the file schema (energies in pJ), ready for ``json.dump``."""
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "units": "pJ",
            "energy": self.energies(),
            "derivation": dict(self.derivation),
            "sources": [s.to_dict() for s in self.sources],
            "caveats": list(self.caveats),
        }


def available_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    folder = resources.files("powersave.energy").joinpath("profiles")
    return sorted(
        entry.name[: -len(".json")]
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    )


def load_profile(name_or_path: str | os.PathLike[str] | Profile) -> Profile:
    """A bundled profile by name, or a profile file by path, validated.

    Args:
        name_or_path: a bundled profile's name (see :func:`available_profiles`), the path of a
            JSON file following the schema in this module's docstring, or a :class:`Profile`
            (returned as it is).

    Raises:
        ProfileError: the name is neither bundled nor an existing file, or the file is not valid
            JSON or breaks the schema (the message names the file and the field).
    """
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = os.fspath(name_or_path)
    if not isinstance(name_or_path, os.PathLike) and text in available_profiles():
        resource = resources.files("powersave.energy").joinpath("profiles", f"{text}.json")
        profile = _parse(resource.read_text(encoding="utf-8"), f"bundled profile {text}.json")
        if profile.name != text:
            raise ProfileError(
                f"bundled profile {text}.json: field 'name' is {profile.name!r}, "
                f"expected {text!r} (the file name without .json)"
            )
        return profile
    if not os.path.isfile(text):
        raise ProfileError(
            f"unknown energy profile {text!r}: not a bundled profile "
            f"(available: {', '.join(available_profiles())}) and no file at that path"
        )
    with open(text, encoding="utf-8") as handle:
        content = handle.read()
    return replace(_parse(content, text), path=os.path.abspath(text))


def _parse(text: str, where: str) -> Profile:
    """Parse and validate one profile file's content; ``where`` names the file in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{where}: not valid JSON ({exc})") from exc
    return profile_from_dict(data, where)


def profile_from_dict(data: Any, where: str = "profile") -> Profile:
    """Validate a profile given as a dict in the file schema and build it.

    Args:
        data: the decoded JSON object.
        where: how to name the profile in error messages (a file path, typically).

    Raises:
        ProfileError: a field is missing, unknown, of the wrong type or out of range.
    """
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: a profile must be a JSON object, got {type(data).__name__}")
    _check_keys(data, _TOP_FIELDS, (), where, "")
    name = _string(data, "name", where)
    description = _string(data, "description", where)
    kind = _string(data, "kind", where)
    if kind not in KINDS:
        raise ProfileError(f"{where}: field 'kind' must be one of {list(KINDS)}, got {kind!r}")
    units = _string(data, "units", where)
    if units not in UNITS_TO_PJ:
        raise ProfileError(
            f"{where}: field 'units' must be one of {list(UNITS_TO_PJ)}, got unknown unit {units!r}"
        )
    scale = UNITS_TO_PJ[units]

    energy = _object(data, "energy", where)
    _check_keys(energy, ENERGY_FIELDS, (), where, "energy.")
    values = {key: _energy(energy[key], where, f"energy.{key}") * scale for key in ENERGY_FIELDS}

    derivation = _object(data, "derivation", where)
    _check_keys(derivation, ENERGY_FIELDS, (), where, "derivation.")
    for key in ENERGY_FIELDS:
        _string(derivation, key, where, f"derivation.{key}")

    raw_sources = data["sources"]
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ProfileError(
            f"{where}: field 'sources' must be a non-empty list of citations "
            "(say where each number comes from)"
        )
    sources = tuple(_source(raw, where, f"sources[{i}]") for i, raw in enumerate(raw_sources))

    caveats = data["caveats"]
    if not isinstance(caveats, list) or not all(isinstance(c, str) for c in caveats):
        raise ProfileError(f"{where}: field 'caveats' must be a list of strings")

    return Profile(
        name=name,
        description=description,
        kind=kind,
        derivation=MappingProxyType({key: str(derivation[key]) for key in ENERGY_FIELDS}),
        sources=sources,
        caveats=tuple(caveats),
        **values,  # type: ignore[arg-type]
    )


def _check_keys(
    data: Mapping[str, Any],
    required: tuple[str, ...],
    optional: tuple[str, ...],
    where: str,
    prefix: str,
) -> None:
    for key in required:
        if key not in data:
            raise ProfileError(f"{where}: missing field '{prefix}{key}'")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ProfileError(
            f"{where}: unknown field '{prefix}{unknown[0]}' "
            f"(allowed: {', '.join(required + optional)})"
        )


def _string(data: Mapping[str, Any], key: str, where: str, label: str | None = None) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{where}: field '{label or key}' must be a non-empty string")
    return value


def _object(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data[key]
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: field '{key}' must be a JSON object")
    return value


def _energy(value: Any, where: str, label: str) -> float:
    # bool is an int in Python; `true` is not an energy.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(
            f"{where}: field '{label}' must be a number (energy per operation), got {value!r}"
        )
    if not math.isfinite(value) or value < 0:
        raise ProfileError(
            f"{where}: field '{label}' must be a finite, non-negative energy, got {value!r}"
        )
    return float(value)


def _source(raw: Any, where: str, label: str) -> Source:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: field '{label}' must be a JSON object")
    _check_keys(raw, _SOURCE_FIELDS, _SOURCE_OPTIONAL, where, f"{label}.")
    for key in ("key", "citation", "detail"):
        _string(raw, key, where, f"{label}.{key}")
    used_for = raw["used_for"]
    if not isinstance(used_for, list) or not used_for:
        raise ProfileError(f"{where}: field '{label}.used_for' must be a non-empty list")
    for item in used_for:
        if item not in ENERGY_FIELDS:
            raise ProfileError(
                f"{where}: field '{label}.used_for' names {item!r}, "
                f"which is not an energy field ({', '.join(ENERGY_FIELDS)})"
            )
    for key in _SOURCE_OPTIONAL:
        if key in raw:
            _string(raw, key, where, f"{label}.{key}")
    return Source(
        key=raw["key"],
        citation=raw["citation"],
        used_for=tuple(used_for),
        detail=raw["detail"],
        doi=raw.get("doi"),
        url=raw.get("url"),
    )
