"""The compiled event engine: numba kernels, planned per layer, same answers as ``run_events``.

:func:`run_compiled` takes the arguments of :func:`powersave.engine.event.run_events` and
returns the same :class:`~powersave.engine.event.EventResult`: the same spikes (times up to
float32 rounding of the potentials), the same counts, the same predictions, logits equal to
float32 tolerance. It differs in how the work is done:

- the graph is compiled once into a :class:`Program` (a step table and flat weight buffers laid
  out for scattering, see :mod:`powersave.engine.kernels`), cached per graph;
- only the spikes that are sent cost anything: a silent neuron is skipped, not multiplied by 0;
- small batches run the whole network in one numba call, event-driven; larger batches run layer
  by layer and the :mod:`~powersave.engine.planner` picks, per layer, the event kernel or a dense
  BLAS kernel from the fraction of the layer's inputs that fire in this batch (a multilayer
  perceptron with every layer on its event kernel then runs in one call again,
  :func:`kernels.chain_batch`). The choice is in ``stats.kernels``; the counts are the event
  counts whichever kernel ran.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import numba
import numpy as np

from powersave.coding import decode
from powersave.engine import kernels as k
from powersave.engine import ops as numpy_ops
from powersave.engine.costs import SynapticCost
from powersave.engine.event import (
    SATURATION_MARGIN,
    EventResult,
    count_ops,
    cut_late_spikes,
    encode_population,
    graph_costs,
    zero_skip_ops,
)
from powersave.engine.planner import DEFAULT_COSTS, DENSE, EVENT, CostModel
from powersave.engine.simd import PANEL
from powersave.engine.stats import RunStats
from powersave.graph.graph import Graph
from powersave.graph.nodes import SYNAPTIC_TYPES, AvgPool, Conv, Dense, Flatten, Input, MaxPool
from powersave.plan import FULL, Plan

ENGINE_NAME = "event-compiled"

_SYNAPTIC = (k.K_DENSE, k.K_CONV, k.K_AVGPOOL)

#: Smallest batch split over threads: below it, handing blocks to threads costs more than it saves.
PARALLEL_MIN_BATCH = 8

#: Samples per call of the batched Dense event kernel (its scratch: 8 bytes per input each).
SCATTER_CHUNK = 256


@dataclass(frozen=True)
class Program:
    """A graph flattened for the kernels; built once per graph by :func:`program`.

    Attributes:
        steps: ``(S, kernels.N_COLUMNS)`` int64, one row per node (see :mod:`kernels`).
        weights: float32, every layer's weights (scatter layout) and biases, end to end.
        fanout: int64, every layer's fan-out map, flattened in C order, end to end.
        readout_table: ``(C + 1 + H, C')`` float64 for a Dense readout of ``H`` inputs: rows
            ``l < C`` are ``sum_i max(0, w_ir - w_il)``, row ``C`` is ``sum_i |w_ic|``, rows
            ``C + 1 + i`` are ``W^T[i]``; ``C'`` is ``C`` rounded up to a multiple of 4, the
            extra columns zero.
        rec_offsets: ``(P,)`` column of each population in a recording buffer of ``rec_size``.
        max_size: the largest population or potential buffer a sample needs.
        shapes: per step, the per-sample shape it produces.
        input_shape: the raw inputs' per-sample shape (``shapes[0]`` is after an ON/OFF split).
        kinds: per synaptic layer, ``"dense"``, ``"conv"`` or ``"avgpool"``.
        costs: the static costs of each synaptic layer.
        populations, population_shapes, scales: name, shape and scale of each population.
        layers: names of the synaptic layers.
        readout: index of the readout step; ``dense_readout``: whether it is Dense.
        neurons, dense_macs, neuron_updates: per-sample constants of the run's stats.
    """

    steps: np.ndarray
    weights: np.ndarray
    fanout: np.ndarray
    readout_table: np.ndarray
    rec_offsets: np.ndarray
    rec_size: int
    max_size: int
    shapes: tuple[tuple[int, ...], ...]
    input_shape: tuple[int, ...]
    kinds: tuple[str, ...]
    costs: tuple[SynapticCost, ...]
    populations: tuple[str, ...]
    population_shapes: tuple[tuple[int, ...], ...]
    scales: tuple[float, ...]
    layers: tuple[str, ...]
    readout: int
    dense_readout: bool
    neurons: tuple[int, ...]
    dense_macs: tuple[int, ...]
    neuron_updates: int
    _plans: dict[Plan, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: Per plan, the share of each synaptic layer's inputs that fired on the last large batch
    #: (the planner's profile).
    activity: dict[Plan, tuple[float, ...]] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def synaptic_steps(self) -> tuple[int, ...]:
        """The step of each synaptic layer, in order."""
        return tuple(int(i) for i in np.flatnonzero(np.isin(self.steps[:, k.KIND], _SYNAPTIC)))

    @property
    def n_classes(self) -> int:
        return int(self.steps[self.readout, k.OUT_SIZE])

    @property
    def n_counts(self) -> int:
        """Columns of the counters: operations per layer, spikes and saturated per population,
        and the readout's operations without the early decision."""
        return len(self.layers) + 2 * len(self.populations) + 1

    @functools.cached_property
    def layer_sizes(self) -> tuple[tuple[int, int], ...]:
        """Each synaptic layer's numbers of inputs and outputs (per sample)."""
        return tuple(
            (int(self.steps[st, k.IN_SIZE]), int(self.steps[st, k.OUT_SIZE]))
            for st in self.synaptic_steps
        )

    @functools.cached_property
    def chain(self) -> np.ndarray:
        """The steps of the synaptic layers, int64, when every one is Dense and nothing but
        Flatten lies between them and the raw inputs (a multilayer perceptron: the layers can
        pass intensities from one to the next, :func:`kernels.chain_batch`); else empty."""
        dense = all(self.steps[st, k.KIND] == k.K_DENSE for st in self.synaptic_steps)
        others = set(range(1, len(self.steps))) - set(self.synaptic_steps)
        flat = all(self.steps[st, k.KIND] == k.K_FLATTEN for st in others)
        return np.array(self.synaptic_steps if dense and flat else (), np.int64)

    @functools.cached_property
    def panel_buffer(self) -> tuple[np.ndarray, np.ndarray]:
        """Every Dense layer's ``W^T`` in panels for :func:`kernels.scatter_batch` (see
        :func:`panel_layout`), in one float32 buffer, each layer's at a cache line; and per
        synaptic layer its start in the buffer (int64; a layer of another kind has none).
        Made on first use: a copy of every Dense layer's weights, also of those the planner
        runs on BLAS (the bench MLP's: 1.1 MB), which one buffer keeps simple to pass."""
        shapes = [
            (n_in, out) if kind == "dense" else (0, 0)
            for kind, (n_in, out) in zip(self.kinds, self.layer_sizes, strict=True)
        ]
        padded = [-(-n_in * out // 16) * 16 for n_in, out in shapes]  # 16 floats: a cache line
        starts = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
        buffer = _aligned_empty(max(sum(padded), 1), np.float32)
        layers = zip(self.synaptic_steps, starts.tolist(), shapes, strict=True)
        for st, start, (n_in, out) in layers:
            if n_in * out:
                w_off = int(self.steps[st, k.W_OFF])
                wt = self.weights[w_off : w_off + n_in * out].reshape(n_in, out)
                panel_layout(wt, buffer[start : start + n_in * out])
        return buffer, starts

    def panels(self, step: int) -> np.ndarray:
        """Dense step ``step``'s ``W^T`` ``(in, out)`` in panels for :func:`kernels.scatter_batch`:
        ``(in, PANEL)`` contiguous per ``PANEL`` columns, then the last ``out % PANEL`` columns
        ``(in, rest)``, flat float32 (a view of :attr:`panel_buffer`)."""
        layer = int(self.steps[step, k.LAYER])
        buffer, starts = self.panel_buffer
        n_in, out = self.layer_sizes[layer]
        return buffer[int(starts[layer]) : int(starts[layer]) + n_in * out]

    def population_table(self, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        """``(P, 4)`` float32 scale, window end, saturation and cut-off times; ``(P,)`` scales.

        float32 as numpy rounds a Python scalar against a float32 array (NEP 50), so the
        kernels' comparisons are the numpy engine's.
        """
        table = self._plans.get(plan)
        if table is None:
            popf = np.empty((len(self.populations), 4), np.float32)
            popd = np.empty(len(self.populations), np.float64)
            for p, scale in enumerate(self.scales):
                c = plan.cutoff(p)
                saturation = scale * (1 + SATURATION_MARGIN)
                popf[p] = (scale, p + 1.0, saturation, p + c if c < 1.0 else np.inf)
                popd[p] = scale
            table = self._plans[plan] = (popf, popd)
        return table


def panel_layout(wt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``W^T`` ``(in, out)`` as :func:`kernels.scatter_batch` reads it: ``(in, PANEL)`` per
    ``PANEL`` output columns, then the last ``out % PANEL`` columns ``(in, rest)``, flat; into
    ``out`` (float32, ``W^T``'s size) when given."""
    full = wt.shape[1] - wt.shape[1] % PANEL
    parts = [wt[:, c : c + PANEL].reshape(-1) for c in range(0, full, PANEL)]
    parts.append(wt[:, full:].reshape(-1))
    # At a 64-byte boundary, so that a panel's row is whole cache lines: numpy's 16-byte
    # alignment splits every row over one more line (the bench MLP's first layer 1.2x slower).
    if out is None:
        out = _aligned_empty(wt.shape[0] * wt.shape[1], np.float32)
    np.concatenate(parts, out=out)
    return out


def _aligned_empty(shape: int | tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a 64-byte boundary."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(size + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start : start + size].view(dtype).reshape(shape)


_PROGRAMS: dict[int, tuple[weakref.ref[Graph], Program]] = {}


def program(graph: Graph, costs: tuple[SynapticCost, ...] | None = None) -> Program:
    """The compiled form of ``graph``, built on first use and cached while the graph lives."""
    key = id(graph)
    cached = _PROGRAMS.get(key)
    if cached is not None and cached[0]() is graph:
        return cached[1]
    prog = _build(graph, graph_costs(graph) if costs is None else costs)
    _PROGRAMS[key] = (weakref.ref(graph, lambda _: _PROGRAMS.pop(key, None)), prog)
    return prog


def _build(graph: Graph, costs: tuple[SynapticCost, ...]) -> Program:
    steps = []
    weights: list[np.ndarray] = []
    fanouts: list[np.ndarray] = []
    w_size = 0
    f_size = 0
    kinds = []
    layer = 0
    pop = 0
    readout = graph.readout_index
    readout_table = np.zeros((1, 1))
    for i, node in enumerate(graph.nodes):
        row = np.zeros(k.N_COLUMNS, np.int64)
        out_shape = graph.shapes[i]
        in_shape = graph.shapes[i - 1] if i else tuple(node.shape)  # type: ignore[union-attr]
        row[k.IN_SIZE] = int(np.prod(in_shape))
        row[k.OUT_SIZE] = int(np.prod(out_shape))
        row[k.POP_OUT] = -1
        if len(in_shape) == 3:
            row[k.C_IN], row[k.H_IN], row[k.W_IN] = in_shape
        if len(out_shape) == 3:
            row[k.C_OUT], row[k.H_OUT], row[k.W_OUT] = out_shape
        if isinstance(node, Input):
            row[k.KIND] = k.K_INPUT
            row[k.FLAG] = int(node.signed)
            row[k.POP_OUT] = 0
        elif isinstance(node, Flatten):
            row[k.KIND] = k.K_FLATTEN
        elif isinstance(node, MaxPool | AvgPool):
            row[k.KIND] = k.K_MAXPOOL if isinstance(node, MaxPool) else k.K_AVGPOOL
            row[k.KH], row[k.KW] = node.kernel
            row[k.SH], row[k.SW] = node.stride  # type: ignore[misc]
            row[k.PH], row[k.PW] = node.padding
        elif isinstance(node, Dense):
            row[k.KIND] = k.K_DENSE
            # W^T (in, out): the outgoing weights of input neuron i are one contiguous row.
            w = np.ascontiguousarray(node.weight.T)
            row[k.W_OFF], row[k.B_OFF] = w_size, w_size + w.size
            weights += [w.ravel(), node.bias]
            w_size += w.size + node.bias.size
            if i == readout:
                w64 = node.weight.T.astype(np.float64)
                # The same expressions as event._early_decision, so the bound is bit-identical.
                # Row C holds sum_i |w_ic|, the magnitude that sizes the rounding tolerance.
                head = np.vstack(
                    [
                        np.maximum(w64[:, None, :] - w64[:, :, None], 0.0).sum(axis=0),
                        np.abs(w64).sum(axis=0)[None, :],
                    ]
                )
                # Then W^T itself in float64, columns padded to a multiple of 4 (one AVX2
                # vector) with zeros: the early decision's per-spike update runs without a
                # remainder loop or a float32 → float64 conversion.
                c = w64.shape[1]
                padded = -(-c // 4) * 4
                # At a cache line: its rows in whole vectors (simd's passes).
                readout_table = _aligned_empty((c + 1 + w64.shape[0], padded), np.float64)
                readout_table[...] = 0.0
                readout_table[: c + 1, :c] = head
                readout_table[c + 1 :, :c] = w64
        elif isinstance(node, Conv):
            row[k.KIND] = k.K_CONV
            row[k.KH], row[k.KW] = node.kernel
            row[k.SH], row[k.SW] = node.stride
            row[k.PH], row[k.PW] = node.padding
            # (O, C, kh, kw) → (C, kh, kw, O), taps flipped: a tap of an input pixel feeds O
            # contiguous weights, and a kernel row feeds consecutive outputs (kernels._conv).
            w = np.ascontiguousarray(node.weight[:, :, ::-1, ::-1].transpose(1, 2, 3, 0))
            row[k.W_OFF], row[k.B_OFF] = w_size, w_size + w.size
            weights += [w.ravel(), node.bias]
            w_size += w.size + node.bias.size
        if isinstance(node, SYNAPTIC_TYPES):
            kinds.append(node.kind)
            row[k.LAYER] = layer
            row[k.POP_IN] = pop
            row[k.F_OFF] = f_size
            fan = np.ascontiguousarray(costs[layer].fanout, dtype=np.int64).ravel()
            fanouts.append(fan)
            f_size += fan.size
            layer += 1
            if i != readout:
                pop += 1
                row[k.POP_OUT] = pop
        steps.append(row)
    populations = graph.populations
    sizes = [p.size for p in populations]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    table = np.stack(steps)
    max_size = int(max(table[:, k.IN_SIZE].max(), table[:, k.OUT_SIZE].max()))
    return Program(
        steps=table,
        weights=np.concatenate(weights).astype(np.float32) if weights else np.zeros(1, "f4"),
        fanout=np.concatenate(fanouts),
        readout_table=readout_table,
        rec_offsets=offsets,
        rec_size=int(sum(sizes)),
        max_size=max_size,
        shapes=tuple(tuple(s) for s in graph.shapes),
        input_shape=tuple(graph.input.shape),
        kinds=tuple(kinds),
        costs=costs,
        populations=tuple(p.source for p in populations),
        population_shapes=tuple(tuple(p.shape) for p in populations),
        layers=tuple(n.name for n in graph.nodes if isinstance(n, SYNAPTIC_TYPES)),
        scales=tuple(p.scale for p in populations),
        readout=readout,
        dense_readout=isinstance(graph.readout, Dense),
        neurons=tuple(sizes),
        dense_macs=tuple(cost.dense_macs for cost in costs),
        neuron_updates=sum(cost.neurons for cost in costs),
    )


def check_plan(prog: Program, plan: Plan) -> None:
    if plan.cutoffs and len(plan.cutoffs) != len(prog.populations):
        raise ValueError(
            f"plan {plan.name!r} has {len(plan.cutoffs)} cut-offs, the network has "
            f"{len(prog.populations)} spiking populations"
        )
    if plan.early_decision and not prog.dense_readout:
        raise ValueError(
            f"early decision needs a Dense readout; {prog.layers[-1]!r} is a convolution"
        )


def run_compiled(
    graph: Graph,
    x: np.ndarray,
    plan: Plan = FULL,
    *,
    costs: tuple[SynapticCost, ...] | None = None,
    record_spikes: bool = False,
    baselines: bool = True,
    kernels: str = "auto",
    cost_model: CostModel = DEFAULT_COSTS,
) -> EventResult:
    """Run a validated batch ``x`` ``(N, *graph.input.shape)`` with the compiled kernels.

    Same arguments and result as :func:`powersave.engine.event.run_events`, plus:

    Args:
        kernels: ``"auto"`` lets the planner choose per layer from the batch's activity;
            ``"event"`` forces the event kernels everywhere (one fused call);
            ``"dense"`` forces the dense BLAS kernels wherever one exists (a readout with an
            early decision is always event-driven: it stops mid-window).
        cost_model: the planner's time estimates (see :mod:`powersave.engine.planner`).

    Threads: batches of at least :data:`PARALLEL_MIN_BATCH` samples are split over
    ``numba.get_num_threads()`` threads (set it with ``numba.set_num_threads``), the event
    kernels' and a batched Dense layer's event product alike; BLAS products use the BLAS
    threads (threadpoolctl).
    """
    if kernels not in ("auto", EVENT, DENSE):
        raise ValueError(f"kernels must be 'auto', 'event' or 'dense', got {kernels!r}")
    prog = program(graph, costs)
    check_plan(prog, plan)
    b, chosen, sums = run_batch(graph, prog, plan, x, record_spikes, kernels, cost_model)
    return _result(graph, prog, plan, x, b, sums.tolist(), chosen, record_spikes, baselines)


def run_batch(
    graph: Graph,
    prog: Program,
    plan: Plan,
    x: np.ndarray,
    record: bool = False,
    kernels: str = "auto",
    cost_model: CostModel = DEFAULT_COSTS,
) -> tuple[_Buffers, tuple[str, ...], np.ndarray]:
    """:func:`run_compiled`'s work without its result objects: the buffers (logits, decision
    times, spike times when ``record``, counters), each layer's kernel and the counters summed
    over the batch (int64). The program and plan checked by the caller (a session does it
    once, :class:`~powersave.session.Session`)."""
    n = x.shape[0]
    src = np.ascontiguousarray(x, dtype=np.float32).reshape(n, -1)
    popf, popd = prog.population_table(plan)
    threads = numba.get_num_threads() if n >= PARALLEL_MIN_BATCH else 1
    b = _Buffers(
        logits=np.empty((n, prog.n_classes)),
        decided=np.empty(n),
        rec=np.empty((n, prog.rec_size) if record else (1, 1), np.float32),
        # A row per sample where threads share the batch (no lost updates), else one row.
        counts=np.zeros((n if threads > 1 else 1, prog.n_counts), np.int64),
    )
    b.decided.fill(len(prog.populations))  # undecided: the window's end (np.full is slower)
    planned = not (kernels == EVENT or (kernels == "auto" and n < cost_model.min_batch))
    if planned:
        chosen = _layered(
            graph, prog, plan, src, popf, popd, b, record, threads, kernels, cost_model
        )
    else:
        chosen = (EVENT,) * len(prog.layers)
        _steps(prog, plan, src, 0, len(prog.steps), popf, popd, b, record, threads)
    sums = b.counts[0] if b.counts.shape[0] == 1 else b.counts.sum(axis=0)
    if planned:
        _remember_activity(prog, plan, n, sums.tolist())
    return b, chosen, sums


#: Placeholders for the kernel's ``out`` (a run to the readout) and ``rec`` (not recording).
NO_OUT = np.empty((1, 1), np.float32)
NO_REC = np.empty((1, 1), np.float32)


@dataclass
class _Buffers:
    logits: np.ndarray  # (N, classes) float64
    decided: np.ndarray  # (N,) decision times
    rec: np.ndarray  # (N, sum of population sizes) spike times before cut-offs, or (1, 1)
    counts: np.ndarray  # (N, Program.n_counts) int64


def _steps(
    prog: Program,
    plan: Plan,
    src: np.ndarray,
    start: int,
    stop: int,
    popf: np.ndarray,
    popd: np.ndarray,
    b: _Buffers,
    record: bool,
    threads: int,
    out: np.ndarray = NO_OUT,
) -> None:
    bad, _ = k.run_steps(
        src, start, stop, prog.steps, prog.weights, prog.fanout, popf, popd, prog.rec_offsets,
        prog.readout_table, plan.early_decision, plan.margin, prog.max_size, out, b.logits,
        b.decided, b.rec, record, b.counts, len(prog.layers), len(prog.populations), threads,
    )  # fmt: skip
    if bad:  # nothing ran: the inputs hold NaN, infinities or (unsigned input) negative values
        _refuse(prog, src)


def _choose(prog: Program, plan: Plan, layer: int, active: float, n: int, model: CostModel) -> str:
    """The planner's kernel for synaptic layer ``layer`` of a batch of ``n`` whose inputs fire
    with share ``active`` (operations over dense MACs). A readout with an early decision is
    always event-driven: it stops mid-window, which only the event kernel can."""
    if plan.early_decision and layer == len(prog.layers) - 1:
        return EVENT
    n_in, n_out = prog.layer_sizes[layer]
    return model.choose(prog.kinds[layer], n_in, n_out, prog.dense_macs[layer], active, n)


def _planned_choices(
    prog: Program, plan: Plan, n: int, kernels: str, cost_model: CostModel
) -> list[str] | None:
    """Every layer's kernel before the run, or ``None`` to decide layer by layer (no profile).

    ``"auto"`` uses the activity this plan showed on the previous large batch
    (:attr:`Program.activity`); ``"dense"`` the dense kernel wherever one can run.
    """
    if kernels == DENSE:
        choices = [DENSE] * len(prog.layers)
        if plan.early_decision:
            choices[-1] = EVENT  # the early decision's readout, as in _choose
        return choices
    activity = prog.activity.get(plan)
    if activity is None:
        return None
    return [_choose(prog, plan, layer, a, n, cost_model) for layer, a in enumerate(activity)]


def _layered(
    graph: Graph,
    prog: Program,
    plan: Plan,
    src: np.ndarray,
    popf: np.ndarray,
    popd: np.ndarray,
    b: _Buffers,
    record: bool,
    threads: int,
    kernels: str,
    cost_model: CostModel,
) -> tuple[str, ...]:
    """The batch through the network, each synaptic layer on the kernel the planner picks.

    Consecutive steps on the interpreter's event kernels (convolutions, pooling, a readout that
    decides early) run as one segment (one call, no population written out in between); a
    layer on the dense kernel, and a Dense layer on the event kernel, run on their own over the
    batch (see ``batched``). With a known activity profile every choice is made up front, so
    that event layers fuse, and a chain of Dense layers run over the batch (from the raw inputs
    on, when the first layer is one of them) passes intensities from one to the next instead of
    spike times written out and read back.
    Without a profile (the first large batch of a plan) each layer is decided from the measured
    activity of its inputs. The batch's activity becomes the plan's profile. A multilayer
    perceptron (:attr:`Program.chain`) planned on event kernels throughout runs in one call
    (:func:`_chain`), the same numbers.
    """
    n = src.shape[0]
    readout = prog.readout
    choices = _planned_choices(prog, plan, n, kernels, cost_model)
    if (
        choices is not None
        and len(prog.chain) > plan.early_decision
        and all(choice == EVENT for choice in choices)
    ):  # a multilayer perceptron all on events: one kernel call per block of the batch
        _chain(prog, plan, src, popf, popd, b, record, threads)
        return tuple(choices)
    chosen: list[str] = []
    cur = src  # raw inputs before step 0, then spike times, or intensities (see `decoded`)
    decoded = False  # whether `cur` holds the intensities of the next layer, its operations counted
    pending = 0  # first step of the event segment not yet run
    synaptic = prog.synaptic_steps

    def flush(stop: int) -> None:
        nonlocal cur, pending
        if pending < stop and not all(
            prog.steps[st, k.KIND] == k.K_FLATTEN for st in range(pending, stop)
        ):
            size = int(prog.steps[stop - 1, k.OUT_SIZE])
            out = np.empty((n, size), np.float32) if stop - 1 != readout else NO_OUT
            _steps(prog, plan, cur, pending, stop, popf, popd, b, record, threads, out)
            cur = out
        pending = stop

    def batched(layer: int, choice: str) -> bool:
        """Whether synaptic layer ``layer`` runs on its own over the batch (not in an event
        segment): on the dense kernel, or a Dense layer on the event kernel that reads
        intensities (:func:`kernels.scatter_batch`), all but a readout that decides early
        (it stops mid-window, in arrival order: the event segment's work)."""
        st = synaptic[layer]
        if choice == DENSE:
            return True
        return prog.steps[st, k.KIND] == k.K_DENSE and not (plan.early_decision and st == readout)

    def dense_chain(layer: int) -> bool:
        """Whether synaptic layer ``layer`` is a Dense layer run over the batch that reads the
        population the step before it writes (only Flatten between)."""
        if choices is None or layer >= len(synaptic) or not batched(layer, choices[layer]):
            return False
        st = synaptic[layer]
        before = synaptic[layer - 1] if layer else 0
        between = range(before + 1, st)
        return prog.steps[st, k.KIND] == k.K_DENSE and all(
            prog.steps[i, k.KIND] == k.K_FLATTEN for i in between
        )

    for st in synaptic:
        layer = int(prog.steps[st, k.LAYER])
        if choices is not None:
            choice = choices[layer]
        else:  # no profile yet ("auto"): the activity entering this layer is measured
            flush(st)
            fanout = prog.costs[layer].fanout.reshape(-1)
            macs = n * prog.dense_macs[layer]
            active = count_ops(np.isfinite(cur), fanout) / macs if macs else 0.0
            choice = _choose(prog, plan, layer, active, n, cost_model)
        chosen.append(choice)
        if not batched(layer, choice):
            continue
        if layer == 0 and dense_chain(0):  # raw inputs straight to the layer's intensities
            cur = _input_intensities(prog, popf, src, b, record)
            decoded = True
        else:
            flush(st)
        chain = prog.steps[st, k.KIND] == k.K_DENSE and dense_chain(layer + 1)
        nxt = synaptic[layer + 1] if chain else -1
        cur = _dense_layer(
            graph, prog, plan, st, cur, decoded, nxt, popf, b, record, choice == EVENT, threads
        )
        decoded = nxt >= 0
        pending = st + 1
    flush(readout + 1)
    return tuple(chosen)


def _chain(
    prog: Program,
    plan: Plan,
    src: np.ndarray,
    popf: np.ndarray,
    popd: np.ndarray,
    b: _Buffers,
    record: bool,
    threads: int,
) -> None:
    """The batch through a multilayer perceptron whose layers all run on their event kernels
    (:func:`kernels.chain_batch`, the batch split in blocks over ``threads`` threads)."""
    panels, starts = prog.panel_buffer
    n_layers, n_pops = len(prog.layers), len(prog.populations)

    def block(lo: int, hi: int) -> int:
        # (with one thread, one block and counts' single row: counts[0:n] is that row)
        bad, _ = k.chain_batch(
            src[lo:hi], prog.steps, prog.chain, panels, starts, prog.weights, prog.fanout, popf,
            popd, prog.readout_table, plan.early_decision, plan.margin, SCATTER_CHUNK,
            b.logits[lo:hi], b.decided[lo:hi], b.rec[lo:hi] if record else b.rec, record,
            prog.rec_offsets, b.counts[lo:hi], n_layers, n_pops,
        )  # fmt: skip
        return int(bad)

    if any(k.in_blocks(block, src.shape[0], threads)):
        _refuse(prog, src)


def _input_intensities(
    prog: Program, popf: np.ndarray, src: np.ndarray, b: _Buffers, record: bool
) -> np.ndarray:
    """The first layer's intensities from the raw inputs (``kernels.input_batch``)."""
    a = np.empty((src.shape[0], prog.neurons[0]), np.float32)
    bad, _ = k.input_batch(
        src, prog.steps[0], popf, prog.fanout, a, b.rec, record, b.counts, len(prog.layers),
        len(prog.populations),
    )  # fmt: skip
    if bad:
        _refuse(prog, src)
    return a


def _refuse(prog: Program, src: np.ndarray) -> None:
    """Raise ``check_batch``'s error for raw inputs a kernel refused (NaN, infinities, or
    negative values for an unsigned input)."""
    from powersave.inputs import check_batch

    shape = prog.input_shape  # the raw inputs' (prog.shapes[0] is after an ON/OFF split)
    check_batch(src.reshape(-1, *shape), shape, signed=bool(prog.steps[0, k.FLAG]))
    raise AssertionError("the kernel refused inputs that check_batch accepts")  # unreachable


def _dense_layer(
    graph: Graph,
    prog: Program,
    plan: Plan,
    st: int,
    cur: np.ndarray,
    decoded: bool,
    nxt_st: int,
    popf: np.ndarray,
    b: _Buffers,
    record: bool,
    scatter: bool = False,
    threads: int = 1,
) -> np.ndarray:
    """Step ``st`` over the batch; returns its output: the (cut) spike times, or, when
    ``nxt_st >= 0`` (the next step is a Dense layer run over the batch too), their intensities
    with that layer's operations counted. ``decoded``: ``cur`` holds intensities. ``scatter``:
    a Dense layer's product on the event kernel (a weight row per input that fired) instead
    of BLAS."""
    n = cur.shape[0]
    n_layers, n_pops = len(prog.layers), len(prog.populations)
    row = prog.steps[st]
    layer = int(row[k.LAYER])
    node = graph.nodes[st]
    if isinstance(node, Dense):
        # Decode in numba, the product in BLAS (the numpy engine's own `a @ W.T`) or on the
        # event kernel (a weight row per fired input), bias, encode, cut-off and counts in numba.
        a = cur
        if not decoded:
            a = np.empty((n, cur.shape[1]), np.float32)
            k.decode_batch(cur, row, popf, prog.fanout, a, b.counts)
        if scatter:
            z = _scatter_product(a, row, prog.panels(st), threads)
        else:
            z = a @ node.weight.T
        nxt = np.empty((n, int(row[k.OUT_SIZE])), np.float32)
        p = int(row[k.POP_OUT])
        f_next = int(prog.steps[nxt_st, k.F_OFF]) if nxt_st >= 0 else 0
        k.encode_batch(
            z, row, prog.weights, popf, nxt, b.logits, b.rec, record,
            int(prog.rec_offsets[p]) if p >= 0 else 0, b.counts, n_layers, n_pops,
            prog.fanout, f_next, layer + 1 if nxt_st >= 0 else -1,
        )  # fmt: skip
        return nxt
    assert not decoded and nxt_st < 0  # only Dense layers chain
    # A convolution or pooling: the numpy engine's own arithmetic (decode, im2col and BLAS,
    # encode, cut).
    p_in = int(row[k.POP_IN])
    fired = np.isfinite(cur)
    a = decode(cur.reshape(n, *prog.shapes[st - 1]), prog.scales[p_in], p_in)
    b.counts[0, layer] += count_ops(fired, prog.costs[layer].fanout.reshape(-1))
    z = numpy_ops.synaptic(a, node)  # type: ignore[arg-type]
    if st == prog.readout:
        b.logits[:] = z.reshape(n, -1)
        return NO_OUT
    p = int(row[k.POP_OUT])
    fired_times, times, clipped, sent = encode_population(z, prog.scales[p], p, plan)
    b.counts[0, n_layers + n_pops + p] += clipped
    b.counts[0, n_layers + p] += sent
    if record:
        off = int(prog.rec_offsets[p])
        b.rec[:, off : off + prog.neurons[p]] = fired_times.reshape(n, -1)
    return np.ascontiguousarray(times, dtype=np.float32).reshape(n, -1)


def _scatter_product(
    a: np.ndarray, row: np.ndarray, panels: np.ndarray, threads: int
) -> np.ndarray:
    """``a @ W.T`` of a Dense layer on its event kernel (:func:`kernels.scatter_chunks`), the
    batch split in blocks over ``threads`` threads (the kernel releases the GIL)."""
    n = a.shape[0]
    z = np.empty((n, int(row[k.OUT_SIZE])), np.float32)

    def block(lo: int, hi: int) -> None:
        k.scatter_chunks(a[lo:hi], row, panels, z[lo:hi], SCATTER_CHUNK)

    k.in_blocks(block, n, threads)
    return z


def _remember_activity(prog: Program, plan: Plan, n: int, totals: list[int]) -> None:
    """Store the batch's share of active inputs per layer (operations over dense MACs) as the
    plan's profile; the readout's is that of full processing, early decision or not."""
    ops = totals[: len(prog.layers)]
    if plan.early_decision:
        ops[-1] = totals[len(prog.layers) + 2 * len(prog.populations)]
    prog.activity[plan] = tuple(
        float(o) / (n * m) if m else 0.0 for o, m in zip(ops, prog.dense_macs, strict=True)
    )


def stats_from_counts(
    prog: Program,
    plan: Plan,
    n: int,
    totals: list[int],
    kernels: tuple[str, ...],
    zero_skip: tuple[int, ...] | None = None,
) -> RunStats:
    """The :class:`RunStats` of ``n`` samples whose counters (summed over them) are ``totals``."""
    n_layers, n_pops = len(prog.layers), len(prog.populations)
    ops = totals[:n_layers]
    saved = totals[n_layers + 2 * n_pops] - ops[-1] if plan.early_decision else 0
    return RunStats(
        n_samples=n,
        populations=prog.populations,
        neurons=prog.neurons,
        spikes=tuple(totals[n_layers : n_layers + n_pops]),
        saturated=tuple(totals[n_layers + n_pops : n_layers + 2 * n_pops]),
        layers=prog.layers,
        layer_synaptic_ops=tuple(ops),
        layer_dense_macs=tuple(n * m for m in prog.dense_macs),
        layer_zero_skip_ops=(0,) * n_layers if zero_skip is None else tuple(zero_skip),
        neuron_updates=n * prog.neuron_updates,
        readout_ops_saved=saved,
        engine=ENGINE_NAME,
        kernels=kernels,
    )


def _result(
    graph: Graph,
    prog: Program,
    plan: Plan,
    x: np.ndarray,
    b: _Buffers,
    totals: list[int],
    chosen: tuple[str, ...],
    record: bool,
    baselines: bool,
) -> EventResult:
    n = x.shape[0]
    zero_skip = zero_skip_ops(graph, x, prog.costs) if baselines else None
    stats = stats_from_counts(prog, plan, n, totals, chosen, zero_skip)
    fired = times = None
    if record:
        fired = tuple(
            b.rec[:, off : off + size].reshape(n, *shape)
            for off, size, shape in zip(
                prog.rec_offsets.tolist(), prog.neurons, prog.population_shapes, strict=True
            )
        )
        times = tuple(cut_late_spikes(t, p, plan) for p, t in enumerate(fired))
    return EventResult(
        logits=b.logits.astype(np.float32),
        stats=stats,
        times=times,
        decision_times=b.decided,
        fired=fired,
    )
