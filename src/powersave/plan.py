"""A power plan: what a mode drops. Data only; the engines read it, ``power/`` calibrates it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    """Per-population cut-offs and the readout's early decision.

    Attributes:
        cutoffs: one ``c_ℓ`` in ``(0, 1]`` per spiking population (input first). Population ℓ
            stops sending at ``ℓ + c_ℓ``: a spike later than that is never sent and costs
            nothing. Equivalent to dropping activations below ``(1 - c_ℓ) * A_ℓ``. An empty tuple
            means no cut-off anywhere.
        early_decision: the readout stops as soon as its decision is certain (certified: the
            prediction equals full processing of the readout's inputs).
        margin: 0 for the certified rule. A margin ``m`` in ``(0, 1)`` gives the looser
            "confident" rule: stop when every rival's deficit exceeds ``(1 - m)`` times the
            certified bound, betting that late inputs will not all push the same way. Never the
            default, no guarantee; its accuracy cost is measured like any mode's.
        name: label for reports.
    """

    cutoffs: tuple[float, ...] = ()
    early_decision: bool = False
    margin: float = 0.0
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        cutoffs = tuple(float(c) for c in self.cutoffs)
        for c in cutoffs:
            if not (math.isfinite(c) and 0.0 < c <= 1.0):
                raise ValueError(f"plan {self.name!r}: every cut-off must be in (0, 1], got {c}")
        object.__setattr__(self, "cutoffs", cutoffs)
        if not (math.isfinite(self.margin) and 0.0 <= self.margin < 1.0):
            raise ValueError(f"plan {self.name!r}: margin must be in [0, 1), got {self.margin}")
        if self.margin and not self.early_decision:
            raise ValueError(f"plan {self.name!r}: a margin needs early_decision=True")

    def cutoff(self, population: int) -> float:
        """``c_ℓ`` for population ``population`` (1.0 when the plan sets none)."""
        return self.cutoffs[population] if self.cutoffs else 1.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "cutoffs": list(self.cutoffs),
            "early_decision": self.early_decision,
            "margin": self.margin,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            cutoffs=tuple(data.get("cutoffs", ())),
            early_decision=bool(data.get("early_decision", False)),
            margin=float(data.get("margin", 0.0)),
            name=str(data.get("name", "")),
        )


FULL = Plan(name="full")
