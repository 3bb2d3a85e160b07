"""Which kernel computes a layer's potentials: the compiled event kernel or a dense BLAS one.

Both give the same potentials up to float32 rounding, and the operation counts are the event
counts whichever ran (a count is a property of the spikes, not of the kernel). The choice is
only about wall-clock time, from a cost model fed with the *measured* activity of the batch:
the fraction of the layer's input neurons that fire, known before the layer runs.

Per sample, with ``f`` the fraction of the ``n_in`` input neurons that fire, ``M`` the layer's
dense multiply-accumulates and ``n_out`` its neurons::

    event ≈ scan · n_in + op[kind] · f · M + out · n_out + fixed     (in the interpreter)
    event ≈ (op[dense] · P + op_narrow · r) · f · n_in + elem · (n_in + n_out)
                                                                     (a Dense layer, batched)
    dense ≈ mac[kind] · M + elem · (n_in + n_out)          (+ call overhead / batch)

``op`` is the time of one synaptic operation of the event kernel (a scattered multiply-add: one
weight read, one accumulate), ``fixed`` its per-sample set-up, ``mac`` that of one
multiply-accumulate of the BLAS kernel at large batch, ``elem`` the passes around it (decode the
inputs, encode the outputs: numba for a Dense layer, numpy for a convolution). At large batches
a Dense layer runs over the batch on intensities either way (``kernels.scatter_batch`` or BLAS
between the same decoding and encoding passes), so only the product differs; ``op[dense]``
includes the scan for the inputs that fired. That event kernel goes through the outputs a
*panel* of ``panel`` columns at a time (``P`` of the ``n_out`` outputs lie in whole panels,
summed in vector registers) and the ``r = n_out mod panel`` others row by row, at
``op_narrow`` per operation (a 10-class readout is all rest: 0.5-0.7 ns per operation,
against 0.045-0.08 in the panels).
Dense is worth it only when most inputs fire and the batch is large enough for BLAS to run at
speed; at small batches the compiled engine runs the whole network in one call, event only.

The constants are nanoseconds on a 2-core AVX2 server (the benchmark's machine: ``python -m
benchmarks.engine`` prints the measured per-layer times they come from); only their ratios
matter. Another machine can pass its own :class:`CostModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Kernel names as recorded in ``RunStats.kernels``.
EVENT, DENSE = "event", "dense"


@dataclass(frozen=True)
class CostModel:
    """Per-sample time estimates (ns) of the two kernels for one layer.

    Attributes:
        op: event kernel, per synaptic operation, by layer kind.
        mac: dense kernel, per multiply-accumulate at large batch, by layer kind.
        scan: event kernel, per input neuron (finding the ones that fired, decoding them).
        out: event kernel, per output neuron (bias, encoding).
        fixed: event kernel, per sample and layer (scratch, copies) when run layer by layer.
        elem: dense path, per input and output neuron (decoding or encoding, counting).
        call: dense path, fixed overhead of one layer call (spread over the batch).
        min_batch: below this batch size every layer runs event-driven, in one fused call.
        op_narrow: a batched Dense layer's event kernel, per synaptic operation on the outputs
            outside its panels of ``panel`` columns.
        panel: output columns per panel (``simd.PANEL``).
    """

    op: dict[str, float] = field(
        default_factory=lambda: {"dense": 0.055, "conv": 0.3, "avgpool": 1.0}
    )
    mac: dict[str, float] = field(
        default_factory=lambda: {"dense": 0.03, "conv": 0.6, "avgpool": 1.0}
    )
    scan: float = 1.0
    out: float = 1.0
    fixed: float = 800.0
    elem: float = 0.5
    call: float = 20_000.0
    min_batch: int = 32
    op_narrow: float = 0.6  # (after the older fields: positional construction unchanged)
    panel: int = 32

    def event_ns(self, kind: str, n_in: int, n_out: int, macs: int, active: float) -> float:
        """Estimated time of the event kernel for one sample of a large batch."""
        if kind == "dense":  # over the batch, between the dense path's own passes
            rest = n_out % self.panel
            per_input = self.op[kind] * (n_out - rest) + self.op_narrow * rest
            return per_input * active * macs / n_out + self.elem * (n_in + n_out)
        return self.scan * n_in + self.op[kind] * active * macs + self.out * n_out + self.fixed

    def dense_ns(self, kind: str, n_in: int, n_out: int, macs: int, batch: int) -> float:
        """Estimated time of the dense kernel for one sample of a batch of ``batch``."""
        return self.mac[kind] * macs + self.elem * (n_in + n_out) + self.call / batch

    def choose(self, kind: str, n_in: int, n_out: int, macs: int, active: float, batch: int) -> str:
        """``"event"`` or ``"dense"`` for a layer whose inputs fire with fraction ``active``."""
        if batch < self.min_batch:
            return EVENT
        event = self.event_ns(kind, n_in, n_out, macs, active)
        dense = self.dense_ns(kind, n_in, n_out, macs, batch)
        return DENSE if dense < event else EVENT


DEFAULT_COSTS = CostModel()
