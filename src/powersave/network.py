"""The user-facing network: a graph, its calibrated power plans, and ``run``."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from powersave.engine.costs import SynapticCost
from powersave.engine.event import (
    EventResult,
    graph_costs,
    run_chunked,
    run_events,
    zero_skip_ops,
)
from powersave.engine.stats import RunStats
from powersave.graph.graph import Graph
from powersave.inputs import check_batch
from powersave.plan import FULL, Plan

if TYPE_CHECKING:
    from powersave.session import Session

#: Share of clipped input values above which :meth:`Network.run` warns.
CLIP_WARNING = 0.01


class InputRangeWarning(UserWarning):
    """Inputs far outside the range the network was calibrated on: they saturate (clip)."""


def warn_if_clipped(clipped: int, values: int, network: Network, stacklevel: int) -> None:
    """An :class:`InputRangeWarning` when more than :data:`CLIP_WARNING` of ``values`` input
    values were clipped to the input scale (``stacklevel`` as :func:`warnings.warn`'s, counted
    from the caller of this function)."""
    share = clipped / values
    if share > CLIP_WARNING:
        warnings.warn(
            f"{share:.1%} of the input values exceed the input scale "
            f"A={network.graph.input.scale:.4g} and were clipped to it (they fire at once); "
            "were the inputs scaled as at conversion (e.g. pixels in [0, 1], not 0-255)?",
            InputRangeWarning,
            stacklevel=stacklevel,
        )


#: Samples processed at once: bounds memory on large inputs, and small chunks run faster.
DEFAULT_CHUNK = 128


def engine_runner(name: str) -> Callable[..., EventResult]:
    """The run function of an engine name (``"auto"`` falls back to numpy without numba)."""
    if name == "numpy":
        return run_events
    if name in ("auto", "compiled"):
        try:
            from powersave.engine.compiled import run_compiled
        except ImportError:
            if name == "compiled":
                raise ImportError("engine='compiled' needs numba: pip install numba") from None
            return run_events
        return run_compiled
    raise ValueError(f"engine must be 'auto', 'compiled' or 'numpy', got {name!r}")


@dataclass(frozen=True)
class Run:
    """The answer of a run, and what it cost.

    Attributes:
        logits: ``(N, classes)`` float32. Equal to the original network's up to float rounding
            and the clipping error at full power; with an early decision, the readout's potentials
            when it decided (the argmax is certified, the values partial).
        predictions: ``(N,)`` int64 class indices.
        stats: operation and spike counts, with the dense and zero-skipping baselines.
        mode: name of the plan that ran.
        seconds: measured wall-clock time of the run (engine only, no input checks).
        times: spike times per population, when ``record_spikes=True``.
        decision_times: ``(N,)`` time at which the readout decided.
    """

    logits: np.ndarray
    predictions: np.ndarray
    stats: RunStats
    mode: str
    seconds: float
    times: tuple[np.ndarray, ...] | None = None
    decision_times: np.ndarray | None = None

    def accuracy(self, labels: Any) -> float:
        """Fraction of predictions equal to ``labels``."""
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != self.predictions.shape[0]:
            raise ValueError(
                f"{labels.shape[0]} labels for {self.predictions.shape[0]} predictions"
            )
        return float(np.mean(self.predictions == labels))


@dataclass(frozen=True)
class Network:
    """A time-to-first-spike network compiled from a ReLU network.

    Attributes:
        graph: the network's layers and scales.
        plans: calibrated power-saving modes by name (``full`` is always available).
        metadata: JSON-ready facts about its making (calibration data size, source model, ...).
    """

    graph: Graph
    plans: Mapping[str, Plan] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def costs(self) -> tuple[SynapticCost, ...]:
        return graph_costs(self.graph)

    @property
    def modes(self) -> tuple[str, ...]:
        """Names accepted by :meth:`run`."""
        return ("full", *(name for name in self.plans if name != "full"))

    def plan(self, mode: str | Plan) -> Plan:
        """The plan a mode name stands for (a :class:`Plan` is returned as it is)."""
        if isinstance(mode, Plan):
            return mode
        if mode == "full":
            return FULL
        if mode in self.plans:
            return self.plans[mode]
        raise ValueError(
            f"unknown mode {mode!r}; this network has {list(self.modes)}. "
            "Calibrate it to get the power-saving modes (Network.calibrate or "
            "'powersave calibrate')."
        )

    def check_inputs(self, x: Any) -> np.ndarray:
        """``x`` as a float32 batch of the network's input shape, or a clear error."""
        return check_batch(x, self.graph.input.shape, signed=self.graph.input.signed)

    def run(
        self,
        x: Any,
        mode: str | Plan = "full",
        *,
        record_spikes: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        baselines: bool = True,
        engine: str = "auto",
    ) -> Run:
        """Run a batch spike by spike.

        Input values above the input scale ``A_0`` saturate: they fire at the window's start, as
        ``A_0`` would (the clipping is counted in ``stats.saturated``). When more than 1 % of the
        values clip, an :class:`InputRangeWarning` says so.

        Args:
            x: ``(N, *input_shape)`` numpy array or torch tensor.
            mode: ``"full"``, a calibrated mode's name, or a :class:`Plan`.
            record_spikes: keep the spike times of every population (memory: N × neurons).
            chunk_size: samples processed at once.
            baselines: also count the zero-skipping baseline (one dense pass of the ReLU
                network; ``stats.zero_skip_ops`` is 0 without it).
            engine: ``"compiled"`` (numba kernels, a planner choosing event or dense kernels per
                layer), ``"numpy"`` (the readable event engine) or ``"auto"`` (compiled when numba
                is installed). Both give the same spikes, counts and predictions.
        """
        plan = self.plan(mode)
        batch = self.check_inputs(x)
        start = time.perf_counter()
        result = run_chunked(
            self.graph,
            batch,
            plan,
            chunk_size=chunk_size,
            costs=self.costs,
            record_spikes=record_spikes,
            baselines=False,
            runner=engine_runner(engine),
        )
        seconds = time.perf_counter() - start  # the spiking path only, never the baseline
        stats = result.stats
        if baselines:
            zero_skip = zero_skip_ops(self.graph, batch, self.costs, chunk_size)
            stats = replace(stats, layer_zero_skip_ops=zero_skip)
        warn_if_clipped(stats.saturated[0], stats.n_samples * stats.neurons[0], self, stacklevel=3)
        return Run(
            logits=result.logits,
            predictions=result.logits.argmax(axis=1).astype(np.int64),
            stats=stats,
            mode=plan.name or (mode if isinstance(mode, str) else "custom"),
            seconds=seconds,
            times=result.times,
            decision_times=result.decision_times,
        )

    def session(self, mode: str | Plan = "full", *, engine: str = "auto") -> Session:
        """A :class:`~powersave.session.Session`: repeated inference in one mode, with the
        set-up done once and the counts adding up (the fast path for one sample at a time)."""
        from powersave.session import Session

        return Session(self, mode, engine=engine)

    def calibrate(self, inputs: Any, labels: Any, targets: Any = None, **options: Any) -> Network:
        """A copy with power-saving modes calibrated on held-out ``inputs`` and ``labels``.

        Shorthand for :func:`powersave.power.calibrate` (see it for ``targets`` and options);
        by default ``balanced`` (≤ 0.5 pp accuracy loss against full), ``saver`` (≤ 2 pp) and
        ``ultra`` (≤ 5 pp). Never calibrate on the data you will quote figures on.
        """
        from powersave.power.calibrate import calibrate  # power/ builds on this module

        return calibrate(self, inputs, labels, targets, **options).network

    def with_plans(self, plans: Mapping[str, Plan]) -> Network:
        """A copy with ``plans`` added (replacing modes of the same name)."""
        return Network(self.graph, {**self.plans, **plans}, self.metadata)
