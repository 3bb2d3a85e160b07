"""Repeated inference in one mode: the fast path for serving, one sample or a few at a time.

:meth:`Network.run` answers a batch with everything a study needs (spike times on request, the
zero-skipping baseline, a fresh :class:`RunStats`); per call that costs tens of microseconds of
Python around a kernel that itself needs about as much. A :class:`Session` does the set-up once
(the compiled program, the plan's tables) and per call only checks the batch and calls the
kernel, while the counts add up in :attr:`Session.stats`::

    session = network.session("balanced")
    labels = session.predict(x)        # (N,) int64
    logits = session.logits(x)         # (N, classes) float32
    session.stats.synaptic_ops_per_sample

Answers and counts are those of ``network.run(x, mode, engine="compiled")`` (the same kernels).
Batches of :data:`~powersave.engine.planner.CostModel.min_batch` samples or more go through
the planner (:func:`~powersave.engine.compiled.run_batch`: :func:`run_compiled`'s work without
its result objects). Without numba a session runs the
numpy engine through :meth:`Network.run`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from powersave.engine.event import run_events
from powersave.engine.stats import RunStats
from powersave.network import Network, engine_runner, warn_if_clipped


class Session:
    """One network, one mode, many calls. Not safe to share between threads (the counts)."""

    def __init__(self, network: Network, mode: Any = "full", *, engine: str = "auto") -> None:
        """Args:
        network: the network to serve.
        mode: ``"full"``, a calibrated mode's name, or a :class:`~powersave.plan.Plan`.
        engine: ``"auto"`` (compiled when numba is installed), ``"compiled"`` or ``"numpy"``.
        """
        runner = engine_runner(engine)  # checks the name; "auto" without numba: numpy
        self.network = network
        self.plan = network.plan(mode)
        self.mode = self.plan.name or (mode if isinstance(mode, str) else "custom")
        self._batches: RunStats | None = None  # the counts of the numpy engine's calls
        self._compiled = None
        if runner is not run_events:
            from powersave.engine import compiled

            self._compiled = compiled
            self._setup()
        self.engine = "compiled" if self._compiled is not None else "numpy"

    def _setup(self) -> None:
        compiled = self._compiled
        assert compiled is not None
        graph = self.network.graph
        prog = compiled.program(graph, self.network.costs)
        compiled.check_plan(prog, self.plan)
        popf, popd = prog.population_table(self.plan)
        self._prog = prog
        self._inputs = prog.neurons[0]
        self._shape = tuple(graph.input.shape)
        self._features = int(np.prod(self._shape))
        self._classes = prog.n_classes
        self._saturated = len(prog.layers) + len(prog.populations)  # the inputs' column
        # Every compiled call's counters, summed (the kernel adds small batches' samples itself,
        # large batches add their sums), and each layer's kernel on the first large batch.
        self._counts = np.zeros((1, prog.n_counts), np.int64)
        self._n = 0
        self._kernels: tuple[str, ...] = ()
        self._min_batch = compiled.DEFAULT_COSTS.min_batch
        self._decided = np.empty(self._min_batch)  # decision times: not kept by a session
        # Small batches' logits: one buffer, reused (the answers are converted before they
        # leave the session); a sample's views made once. Per call, numpy's allocations and
        # slices cost ~1 µs of a ~20 µs single-sample call.
        self._logits = np.empty((self._min_batch, self._classes))
        self._one = (self._logits[:1], self._decided[:1])
        k = compiled.k
        self._kernel = k.run
        ctl = k.control(
            0, len(prog.steps), self.plan.early_decision, prog.max_size, False,
            len(prog.layers), len(prog.populations), prog.rec_offsets,
        )  # fmt: skip
        # The kernel's arguments between the batch and its outputs (kernels.run's order).
        self._program_args = (
            prog.steps, prog.weights, prog.fanout, popf, k.plan64(popd, self.plan.margin),
            prog.readout_table, ctl, compiled.NO_OUT,
        )  # fmt: skip
        self._no_rec = compiled.NO_REC

    # -- answers ----------------------------------------------------------------------------------

    def logits(self, x: Any) -> np.ndarray:
        """``(N, classes)`` float32 readout potentials of a batch ``x`` ``(N, *input_shape)``."""
        return self._run(x).astype(np.float32, copy=False)  # a large batch's are its own

    def predict(self, x: Any) -> np.ndarray:
        """``(N,)`` int64 predicted classes of a batch ``x`` ``(N, *input_shape)``."""
        return self._run(x).argmax(axis=1)

    # -- counts -----------------------------------------------------------------------------------

    @property
    def stats(self) -> RunStats | None:
        """The counts of every call since the session began (or :meth:`reset`); ``None`` before
        the first. Without the zero-skipping baseline (``zero_skip_ops`` is 0): use
        :meth:`Network.run` for comparisons."""
        parts = [] if self._batches is None else [self._batches]
        compiled = self._compiled
        if compiled is not None and self._n:
            kernels = self._kernels or (compiled.EVENT,) * len(self._prog.layers)
            parts.append(
                compiled.stats_from_counts(
                    self._prog, self.plan, self._n, self._counts[0].tolist(), kernels
                )
            )
        return RunStats.merge(parts) if parts else None

    def reset(self) -> None:
        """Forget the counts so far."""
        self._batches = None
        if self._compiled is not None:
            self._counts[:] = 0
            self._n = 0
            self._kernels = ()

    # -- the run ----------------------------------------------------------------------------------

    def _run(self, x: Any) -> np.ndarray:
        """The batch's logits: a float32 array of its own, or, for a small batch on the
        compiled engine, a view of the session's float64 buffer (reused by the next call)."""
        compiled = self._compiled
        if compiled is None:
            run = self.network.run(x, self.plan, baselines=False, engine="numpy")
            self._add(run.stats)
            return run.logits
        if not (
            type(x) is np.ndarray
            and x.shape[1:] == self._shape
            and x.dtype == np.float32
            and x.flags.c_contiguous
            and x.shape[0] >= 1
        ):
            x = np.ascontiguousarray(self.network.check_inputs(x))  # a clear error, or a batch
        n = x.shape[0]
        if n >= self._min_batch:  # the planner's path (it refuses bad inputs too)
            b, kernels, sums = compiled.run_batch(self.network.graph, self._prog, self.plan, x)
            self._counts[0] += sums
            self._n += n
            self._kernels = self._kernels or kernels
            warn_if_clipped(int(sums[self._saturated]), n * self._inputs, self.network, 3)
            # float32, as run_compiled's logits (predictions agree with Network.run's)
            return b.logits.astype(np.float32)
        logits, decided = self._one if n == 1 else (self._logits[:n], self._decided[:n])
        bad, clipped = self._kernel(
            x.reshape(n, self._features), *self._program_args, logits, decided, self._no_rec,
            self._counts,
        )  # fmt: skip
        if bad:  # non-finite or (unsigned input) negative values; nothing ran
            self.network.check_inputs(x)  # raises, with the reason
        if clipped:
            warn_if_clipped(clipped, n * self._inputs, self.network, 3)
        self._n += n
        return logits

    def _add(self, stats: RunStats) -> None:
        """Fold a call's counts into the running total (kept as one RunStats, not a list)."""
        self._batches = stats if self._batches is None else RunStats.merge([self._batches, stats])

    def __repr__(self) -> str:
        return f"Session(mode={self.mode!r}, engine={self.engine!r})"
