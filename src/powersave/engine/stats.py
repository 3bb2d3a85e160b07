"""Counts returned by every run (DESIGN.md §3): totals over the batch, with per-sample means."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunStats:
    """What a run cost, and what the two baselines would have cost on the same inputs.

    Totals are summed over the batch; the ``*_per_sample`` properties divide by ``n_samples``.

    Attributes:
        n_samples: batch size.
        populations: names of the spiking populations (input first).
        neurons: neurons per population (per sample).
        spikes: spikes sent per population (total); spikes dropped by a cut-off are not counted.
        saturated: neurons per population whose activation exceeded the scale ``A`` and were
            clipped to it (total; the clipping error of the code).
        layers: names of the synaptic nodes (hidden layers and the readout).
        synaptic_ops: per layer, spikes delivered through non-zero weights (total).
        dense_macs: per layer, multiply-accumulates of a dense evaluation (total).
        zero_skip_ops: per layer, non-zero activations of the ReLU network times their non-zero
            fan-out (total): what an accelerator that skips zeros does, without spikes.
        neuron_updates: neurons computed (each synaptic layer's neurons, once per sample; total).
        readout_ops_saved: synaptic operations the early decision saved at the readout (total).
        engine: which engine produced the run.
        kernels: per layer, the kernel that ran it (``"event"`` or ``"dense"``).
    """

    n_samples: int
    populations: tuple[str, ...]
    neurons: tuple[int, ...]
    spikes: tuple[int, ...]
    saturated: tuple[int, ...]
    layers: tuple[str, ...]
    layer_synaptic_ops: tuple[int, ...]
    layer_dense_macs: tuple[int, ...]
    layer_zero_skip_ops: tuple[int, ...]
    neuron_updates: int
    readout_ops_saved: int = 0
    engine: str = "event-numpy"
    kernels: tuple[str, ...] = field(default=())

    # -- totals ---------------------------------------------------------------------------------

    @property
    def synaptic_ops(self) -> int:
        """Synaptic operations of the whole batch."""
        return int(sum(self.layer_synaptic_ops))

    @property
    def dense_macs(self) -> int:
        """Dense multiply-accumulates of the whole batch (the dense baseline)."""
        return int(sum(self.layer_dense_macs))

    @property
    def zero_skip_ops(self) -> int:
        """Operations of the zero-skipping ReLU network on the whole batch (the other baseline)."""
        return int(sum(self.layer_zero_skip_ops))

    @property
    def total_spikes(self) -> int:
        return int(sum(self.spikes))

    # -- per sample -----------------------------------------------------------------------------

    def _mean(self, total: float) -> float:
        return float(total) / self.n_samples

    @property
    def synaptic_ops_per_sample(self) -> float:
        return self._mean(self.synaptic_ops)

    @property
    def dense_macs_per_sample(self) -> float:
        return self._mean(self.dense_macs)

    @property
    def zero_skip_ops_per_sample(self) -> float:
        return self._mean(self.zero_skip_ops)

    @property
    def spikes_per_sample(self) -> float:
        return self._mean(self.total_spikes)

    @property
    def neuron_updates_per_sample(self) -> float:
        return self._mean(self.neuron_updates)

    @property
    def spikes_per_neuron(self) -> float:
        """Spikes per neuron per inference, over all spiking populations (input included)."""
        return self.total_spikes / (self.n_samples * sum(self.neurons))

    @property
    def spikes_per_hidden_neuron(self) -> float:
        """Spikes per neuron per inference, over the hidden populations only (0 if none)."""
        hidden = sum(self.neurons[1:])
        return sum(self.spikes[1:]) / (self.n_samples * hidden) if hidden else 0.0

    @property
    def spikes_per_neuron_by_population(self) -> tuple[float, ...]:
        return tuple(
            s / (self.n_samples * n) for s, n in zip(self.spikes, self.neurons, strict=True)
        )

    def per_sample_counts(self) -> dict[str, float]:
        """Per-sample means in the form the energy estimates take."""
        return {
            "synaptic_ops": self.synaptic_ops_per_sample,
            "spikes": self.spikes_per_sample,
            "neuron_updates": self.neuron_updates_per_sample,
            "dense_macs": self.dense_macs_per_sample,
            "zero_skip_ops": self.zero_skip_ops_per_sample,
        }

    @classmethod
    def merge(cls, parts: list[RunStats]) -> RunStats:
        """Stats of a batch processed in chunks: counts add up."""
        first = parts[0]

        def add(name: str) -> tuple[int, ...]:
            return tuple(int(sum(v)) for v in zip(*(getattr(p, name) for p in parts), strict=True))

        return cls(
            n_samples=sum(p.n_samples for p in parts),
            populations=first.populations,
            neurons=first.neurons,
            spikes=add("spikes"),
            saturated=add("saturated"),
            layers=first.layers,
            layer_synaptic_ops=add("layer_synaptic_ops"),
            layer_dense_macs=add("layer_dense_macs"),
            layer_zero_skip_ops=add("layer_zero_skip_ops"),
            neuron_updates=sum(p.neuron_updates for p in parts),
            readout_ops_saved=sum(p.readout_ops_saved for p in parts),
            engine=first.engine,
            kernels=first.kernels,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: totals, per-sample means and per-layer detail."""
        return {
            "engine": self.engine,
            "n_samples": self.n_samples,
            "synaptic_ops": self.synaptic_ops,
            "dense_macs": self.dense_macs,
            "zero_skip_ops": self.zero_skip_ops,
            "synaptic_ops_per_sample": self.synaptic_ops_per_sample,
            "dense_macs_per_sample": self.dense_macs_per_sample,
            "zero_skip_ops_per_sample": self.zero_skip_ops_per_sample,
            "spikes_per_sample": self.spikes_per_sample,
            "spikes_per_neuron": self.spikes_per_neuron,
            "spikes_per_hidden_neuron": self.spikes_per_hidden_neuron,
            "neuron_updates_per_sample": self.neuron_updates_per_sample,
            "readout_ops_saved_per_sample": self._mean(self.readout_ops_saved),
            "populations": [
                {
                    "name": name,
                    "neurons": n,
                    "spikes_per_sample": self._mean(s),
                    "spikes_per_neuron": s / (self.n_samples * n),
                    "saturated_per_sample": self._mean(c),
                }
                for name, n, s, c in zip(
                    self.populations, self.neurons, self.spikes, self.saturated, strict=True
                )
            ],
            "layers": [
                {
                    "name": name,
                    "synaptic_ops_per_sample": self._mean(s),
                    "dense_macs_per_sample": self._mean(d),
                    "zero_skip_ops_per_sample": self._mean(z),
                    **({"kernel": k} if k else {}),
                }
                for name, s, d, z, k in zip(
                    self.layers,
                    self.layer_synaptic_ops,
                    self.layer_dense_macs,
                    self.layer_zero_skip_ops,
                    self.kernels or ("",) * len(self.layers),
                    strict=True,
                )
            ],
        }
