"""The compiled engine's own concerns: inference without PyTorch, the kernel cache, the planner,
threads, errors. (That it gives the numpy engine's answers is in test_conformance.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from nets import tiny_mlp

import powersave
from powersave.engine import compiled
from powersave.engine import kernels as k
from powersave.engine.compiled import program, run_compiled
from powersave.engine.event import run_events
from powersave.engine.planner import DENSE, EVENT, CostModel
from powersave.errors import InputError
from powersave.graph import Conv, Dense, Flatten, Graph, Input
from powersave.network import Network
from powersave.plan import Plan


def small_mlp(seed: int = 0) -> tuple[Graph, np.ndarray]:
    return tiny_mlp(seed)


def _python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_inference_imports_neither_torch_nor_matplotlib(tmp_path: Path) -> None:
    g, x = small_mlp()
    path = tmp_path / "net.safetensors"
    powersave.save(Network(g, {"eco": Plan(cutoffs=(0.6, 0.8), early_decision=True)}), path)
    np.save(tmp_path / "x.npy", x)
    out = _python(
        f"""
        import json, sys
        import numpy as np
        import powersave
        from powersave.engine.compiled import run_compiled
        net = powersave.load({str(path)!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        run = net.run(x, "eco")
        compiled = run_compiled(net.graph, x, net.plan("eco"))
        print(json.dumps({{
            "heavy": sorted(m for m in ("torch", "matplotlib") if m in sys.modules),
            "spikes": sum(run.stats.spikes),
            "agree": bool((run.predictions == compiled.logits.argmax(1)).all()),
        }}))
        """
    )
    assert out["spikes"] > 0
    assert out["agree"]
    assert out["heavy"] == []


def test_a_second_process_loads_the_kernels_from_the_cache() -> None:
    code = """
        import json
        import numpy as np
        from powersave.engine import kernels
        from powersave.engine.compiled import run_compiled
        from powersave.graph import Dense, Graph, Input
        g = Graph((Input("x", (3,), 1.0), Dense("out", np.eye(2, 3), np.zeros(2))))
        run_compiled(g, np.ones((1, 3), np.float32))
        print(json.dumps({
            "hits": sum(kernels.run.stats.cache_hits.values()),
            "misses": sum(kernels.run.stats.cache_misses.values()),
        }))
    """
    _python(code)  # compiles and writes the cache if it is cold
    second = _python(code)
    assert second == {"hits": 1, "misses": 0}


def test_the_planner_runs_small_batches_event_driven_in_one_call() -> None:
    model = CostModel()
    assert model.choose("dense", 784, 256, 784 * 256, 1.0, batch=1) == EVENT
    assert model.choose("dense", 784, 256, 784 * 256, 1.0, batch=model.min_batch - 1) == EVENT


def test_the_planner_weighs_activity_at_large_batches() -> None:
    model = CostModel()
    macs = 784 * 256
    assert model.choose("dense", 784, 256, macs, 0.02, batch=256) == EVENT
    assert model.choose("dense", 784, 256, macs, 1.0, batch=256) == DENSE


def test_planner_choice_is_recorded_and_counts_stay_event_counts() -> None:
    g, x = small_mlp()
    x = np.concatenate([x] * 2)
    always_dense = CostModel(
        op={"dense": 1e3, "conv": 1e3, "avgpool": 1e3}, op_narrow=1e3, min_batch=2
    )
    plan = Plan(cutoffs=(0.7, 0.9))
    got = run_compiled(g, x, plan, cost_model=always_dense, record_spikes=True)
    expected = run_events(g, x, plan, record_spikes=True)
    assert got.stats.kernels == (DENSE, DENSE)
    assert got.stats.layer_synaptic_ops == expected.stats.layer_synaptic_ops
    assert got.stats.spikes == expected.stats.spikes
    assert got.stats.to_dict()["layers"][0]["kernel"] == DENSE
    early = run_compiled(g, x, Plan(early_decision=True), cost_model=always_dense)
    assert early.stats.kernels == (DENSE, EVENT)  # an early decision stops mid-window
    small = run_compiled(g, x[:1], plan, cost_model=CostModel())
    assert small.stats.kernels == (EVENT, EVENT)


def test_the_planner_remembers_each_plan_s_activity() -> None:
    g, x = small_mlp(2)
    x = np.concatenate([x] * 2)
    plan = Plan(cutoffs=(0.7, 0.9), early_decision=True)
    prog = program(g)
    prog.activity.pop(plan, None)
    first = run_compiled(g, x, plan)
    full = run_compiled(g, x, Plan(cutoffs=plan.cutoffs), kernels="event")  # readout without ED
    ops = full.stats.layer_synaptic_ops
    np.testing.assert_allclose(
        prog.activity[plan], [o / m for o, m in zip(ops, first.stats.layer_dense_macs, strict=True)]
    )
    # Later batches decide every layer up front from the profile (so event layers fuse).
    model = CostModel(min_batch=2)
    planned = [
        model.choose("dense", int(prog.steps[st, 1]), int(prog.steps[st, 2]), m, a, len(x))
        for st, m, a in zip(prog.synaptic_steps, prog.dense_macs, prog.activity[plan], strict=True)
    ]
    expected = (*planned[:-1], EVENT)  # the early decision's readout is event-driven
    again = run_compiled(g, x, plan, cost_model=model)
    assert again.stats.kernels == expected
    assert again.stats.layer_synaptic_ops == first.stats.layer_synaptic_ops
    np.testing.assert_array_equal(again.logits.argmax(1), first.logits.argmax(1))


def _perceptron(seed: int, signed: bool) -> tuple[Graph, np.ndarray]:
    """Three Dense layers (inputs not a multiple of 8, outputs beyond a whole panel)."""
    rng = np.random.default_rng(seed)
    n_in = 37
    f = 2 * n_in if signed else n_in
    sizes = [f, 40, 19, 5]
    layers = [
        Dense(
            f"d{i}",
            rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
            rng.normal(size=sizes[i + 1]) * (0.2 if i < 2 else 2.0),  # some decide early
            scale=1.0 if i < 2 else None,
        )
        for i in range(3)
    ]
    g = Graph((Input("x", (n_in,), 1.0, signed=signed), *layers))
    x = rng.random((70, n_in)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0.0
    return g, (x * 2 - 1 if signed else x).astype(np.float32)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("early", [False, True])
def test_a_perceptron_on_events_runs_in_one_call_with_the_layered_numbers(
    signed: bool, early: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kernels.chain_batch (a batch through a multilayer perceptron whose layers all run on
    their event kernels, one call) gives the layer-by-layer route's numbers bit for bit: logits,
    decision times, recorded spikes, every count; with one thread and with two."""
    g, x = _perceptron(int(signed) + 2 * int(early), signed)
    prog = program(g)
    assert prog.chain.tolist() == list(prog.synaptic_steps)
    plan = Plan(cutoffs=(0.9, 0.6, 0.8), early_decision=early)
    events = CostModel(mac={"dense": 1e3, "conv": 1e3, "avgpool": 1e3}, min_batch=2)
    calls = []
    chain_batch = k.chain_batch

    def spy(*args: object) -> object:
        calls.append(len(args[0]))  # type: ignore[arg-type]
        return chain_batch(*args)

    monkeypatch.setattr(k, "chain_batch", spy)
    run_compiled(g, x, plan, cost_model=events)  # no profile yet: layer by layer
    assert not calls
    before = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            fused = run_compiled(g, x, plan, cost_model=events, record_spikes=True)
            assert sum(calls) == len(x)
            calls.clear()
            monkeypatch.setitem(prog.__dict__, "chain", np.array([], np.int64))
            layered = run_compiled(g, x, plan, cost_model=events, record_spikes=True)
            monkeypatch.delitem(prog.__dict__, "chain")
            assert not calls
            assert fused.stats == layered.stats
            assert fused.stats.kernels == (EVENT,) * 3
            np.testing.assert_array_equal(fused.logits, layered.logits)
            np.testing.assert_array_equal(fused.decision_times, layered.decision_times)
            for a, b in zip(fused.fired, layered.fired, strict=True):  # type: ignore[arg-type]
                np.testing.assert_array_equal(a, b)
    finally:
        numba.set_num_threads(before)
    assert sum(fused.stats.spikes[1:]) > 0
    if early:
        assert fused.stats.readout_ops_saved > 0
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(InputError, match=r"index \(3, 5\)"):
        run_compiled(g, bad, plan, cost_model=events)


def test_threads_do_not_change_the_answer() -> None:
    g, x = small_mlp(1)
    plan = Plan(cutoffs=(0.8, 0.9), early_decision=True)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run_compiled(g, x, plan, record_spikes=True)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = run_compiled(g, x, plan, record_spikes=True)
    finally:
        numba.set_num_threads(before)
    assert sum(one.stats.spikes) > 0
    np.testing.assert_array_equal(one.logits, many.logits)
    np.testing.assert_array_equal(one.decision_times, many.decision_times)
    assert one.stats == many.stats
    for a, b in zip(one.times, many.times, strict=True):  # type: ignore[arg-type]
        np.testing.assert_array_equal(a, b)


def test_the_program_is_built_once_per_graph() -> None:
    g, _ = small_mlp()
    assert program(g) is program(g)
    other, _ = small_mlp(1)
    assert program(other) is not program(g)
    assert program(g).weights.dtype == np.float32
    # Dense weights are stored transposed: the row of input neuron i is contiguous.
    dense = g.nodes[2]
    w = program(g).weights[: dense.weight.size].reshape(36, 20)  # type: ignore[union-attr]
    np.testing.assert_array_equal(w, dense.weight.T)  # type: ignore[union-attr]


def test_engine_name_and_errors() -> None:
    g, x = small_mlp()
    assert run_compiled(g, x[:2]).stats.engine == compiled.ENGINE_NAME
    with pytest.raises(ValueError, match="kernels must be"):
        run_compiled(g, x, kernels="fast")
    with pytest.raises(ValueError, match="has 3 cut-offs, the network has 2 spiking"):
        run_compiled(g, x, Plan(cutoffs=(1.0, 0.5, 0.5)))
    conv = Graph(
        (
            Input("x", (1, 3, 3), 1.0),
            Conv("c", np.ones((1, 1, 2, 2), np.float32), [0.0]),
            Flatten("f"),
        )
    )
    with pytest.raises(ValueError, match="early decision needs a Dense readout"):
        run_compiled(conv, np.ones((1, 1, 3, 3), np.float32), Plan(early_decision=True))


@pytest.mark.parametrize("window", [0, 1, 2, 5])
@pytest.mark.parametrize("seed", range(6))
def test_the_arrival_order_is_numpy_s_stable_argsort(window: int, seed: int) -> None:
    from powersave.engine import kernels

    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 600))
    grid = int(rng.choice([3, 50, 10**6]))  # few distinct times: many ties
    times = (window + rng.integers(0, grid, size) / grid).astype(np.float32)
    times[rng.random(size) < 0.3] = np.inf  # silent neurons are not arrivals
    idx = np.flatnonzero(np.isfinite(times)).astype(np.int64)
    keys = np.empty(4 * size + 65, np.int64)
    scale = np.float32(rng.choice([1.0, 1.7, 0.3]))
    val = scale * (np.float32(window + 1) - times[idx])  # the gather's float32 intensities
    expected = idx[np.argsort(times[idx], kind="stable")]
    kernels._arrival_order(times, idx.size, idx, val, np.float64(scale), keys)
    order = keys[: idx.size] & 0xFFFFFFFF
    np.testing.assert_array_equal(idx[order], expected)
    # The buckets alone (the early decision takes arrivals back a bucket at a time): the same
    # sets as the exact order's, bucket by bucket, each bucket's intensities within its range.
    n_buckets = kernels._buckets(idx.size, val, np.float64(scale), keys)
    ends = keys[2 * idx.size : 2 * idx.size + n_buckets]
    assert ends[-1] == idx.size and (np.diff(ends) >= 0).all()
    order = keys[: idx.size]
    begin = 0
    for b, end in enumerate(ends):
        members = idx[order[begin:end]]
        assert sorted(members) == sorted(expected[begin:end])
        assert sorted(order[begin:end]) == list(order[begin:end])  # stable: by position
        late = (scale - val[order[begin:end]]) / scale * n_buckets
        assert (late >= b - 1e-3).all() and (late < b + 1 + 1e-3).all()
        begin = end


@pytest.mark.parametrize("seed", range(8))
def test_the_early_decision_finds_numpy_s_arrival(seed: int) -> None:
    """kernels._early with margin 0 walks back from the window's end a time bucket at a time
    (docs/engine.md): on readouts of every size, with spike times on coarse grids (ties
    within and across buckets), samples where nothing fires, a bias that decides before the
    first spike, and a hidden layer in front (a later window), it stops at the numpy engine's
    arrival: the same decision times and operations, the same logits to rounding."""
    rng = np.random.default_rng(seed)
    h = int(rng.integers(1, 400))
    c = (2, 5, 8, 10, 13, 16, 17, 20)[seed]  # tables of 4 to 16 columns (simd's passes), and 20
    grid = int(rng.choice([3, 40, 10**6]))
    x = (np.round(rng.random((150, h)) * grid) / grid).astype(np.float32)
    x[rng.random(x.shape) < rng.random()] = 0.0  # silent inputs, a random share
    x[:4] = 0.0  # nothing fires
    spread = float(rng.choice([0.5, 2.0, 30.0]))  # 30: decided before the first spike
    bias = rng.normal(size=c) * spread
    out_in = h
    nodes: list = [Input("x", (h,), 1.0)]
    if seed % 2:  # a hidden layer: the readout's inputs arrive in the second window
        out_in = int(rng.integers(8, 200))
        weight = rng.normal(size=(out_in, h)) / np.sqrt(h)
        nodes.append(Dense("h", weight, rng.normal(size=out_in), scale=1.0))
    nodes.append(Dense("out", rng.normal(size=(c, out_in)) / np.sqrt(out_in), bias))
    graph = Graph(tuple(nodes))
    decided = 0
    for cutoffs in ((), (0.5, 0.7)):
        plan = Plan(cutoffs[: graph.n_windows], early_decision=True)
        expected = run_events(graph, x, plan)
        got = run_compiled(graph, x, plan, kernels="event")
        if seed % 2:  # a hidden layer's spike times agree to float32 rounding (sums in
            # another order); the inputs' own are the same numbers in both engines
            np.testing.assert_allclose(got.decision_times, expected.decision_times, atol=2e-6)
        else:
            np.testing.assert_array_equal(got.decision_times, expected.decision_times)
        assert got.stats.layer_synaptic_ops == expected.stats.layer_synaptic_ops
        assert got.stats.readout_ops_saved == expected.stats.readout_ops_saved
        np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got.logits.argmax(1), expected.logits.argmax(1))
        decided += int((expected.decision_times < graph.n_windows).sum())
    assert 0 < decided < 2 * len(x) or spread == 30.0  # both kinds (the silent samples stay
    # undecided unless the bias alone decides them)


def test_one_row_of_counters_is_never_shared_between_threads() -> None:
    from powersave.engine import kernels

    g, x = small_mlp(3)
    x = np.concatenate([x] * 10)  # 400 samples
    prog = program(g)
    plan = Plan(cutoffs=(0.8, 0.9))
    popf, popd = prog.population_table(plan)
    totals = []
    for threads, rows in ((1, len(x)), (2, 1)):
        counts = np.zeros((rows, prog.n_counts), np.int64)
        kernels.run_steps(
            x.reshape(len(x), -1), 0, len(prog.steps), prog.steps, prog.weights, prog.fanout,
            popf, popd, prog.rec_offsets, prog.readout_table, False, 0.0, prog.max_size,
            compiled.NO_OUT, np.empty((len(x), prog.n_classes)), np.empty(len(x)),
            compiled.NO_REC, False, counts, len(prog.layers), len(prog.populations), threads,
        )  # fmt: skip
        totals.append(counts.sum(axis=0))
    assert totals[0].sum() > 0
    np.testing.assert_array_equal(totals[0], totals[1])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("record", [False, True])
def test_the_raw_inputs_pass_is_step_0_then_decoding_bit_for_bit(
    signed: bool, record: bool
) -> None:
    """kernels.input_batch (eight inputs at a time in simd.encode_inputs, the rest of the 36 in
    numba) gives the intensities of the interpreter's step 0 (encoding, cut-off) then
    kernels.decode_batch, bit for bit, with the same counts and recorded spike times; inputs
    above the scale saturate, silent samples stay silent."""
    g, x = tiny_mlp(6, signed=signed)
    x[0] = 0.0
    prog = program(g)
    popf, popd = prog.population_table(Plan(cutoffs=(0.6, 0.8)))
    x[1, 0, 0, :] = 3.0  # above the input scale
    x[1, 0, 1, :] = popf[0, k.P_SAT]  # at the saturation threshold: not above it
    x[1, 0, 2, :] = popf[0, k.P_END] - popf[0, k.P_CUT]  # fires at the cut-off: kept
    if signed:
        x[2, 0, 1, :] = -3.0  # the OFF channels saturate
    x = x.reshape(len(x), -1).astype(np.float32)
    n_layers, n_pops, n = len(prog.layers), len(prog.populations), len(x)
    width = int(prog.steps[0, k.OUT_SIZE])
    rec_width = int(prog.rec_offsets[-1] + prog.neurons[-1]) if record else 1
    counts, rec = (
        np.zeros((n, prog.n_counts), np.int64),
        np.full((n, rec_width), np.nan, np.float32),
    )
    a = np.full((n, width), np.nan, np.float32)
    above = (x > popf[0, k.P_SAT]).sum() + signed * (-x > popf[0, k.P_SAT]).sum()
    assert k.input_batch(x, prog.steps[0], popf, prog.fanout, a, rec, record, counts, n_layers,
                         n_pops) == (0, above)  # fmt: skip
    counts_ref, rec_ref = np.zeros_like(counts), np.full_like(rec, np.nan)
    times = np.empty((n, width), np.float32)
    k.run_steps(
        x, 0, 1, prog.steps, prog.weights, prog.fanout, popf, popd, prog.rec_offsets,
        prog.readout_table, False, 0.0, prog.max_size, times, np.empty((n, 4)), np.empty(n),
        rec_ref, record, counts_ref, n_layers, n_pops,
    )  # fmt: skip
    a_ref = np.empty_like(a)
    k.decode_batch(times, prog.steps[prog.synaptic_steps[0]], popf, prog.fanout, a_ref, counts_ref)
    np.testing.assert_array_equal(a.view(np.int32), a_ref.view(np.int32))
    np.testing.assert_array_equal(counts, counts_ref)
    np.testing.assert_array_equal(rec, rec_ref)
    assert not a[0].any() and a[1].any() and counts[:, n_layers + n_pops].sum() > 0


@pytest.mark.parametrize("kernels", ["event", "dense"])
def test_raw_inputs_are_checked_whichever_kernel_reads_them_first(kernels: str) -> None:
    """A first layer on the dense kernel reads the raw inputs itself (kernels.input_batch):
    it refuses what step 0 of the event kernel refuses, with check_batch's error, which names
    the first bad value's place in the raw batch (a signed input's too: the kernels see it
    split into ON and OFF channels, twice the channels)."""
    from powersave.inputs import InputError

    g, x = small_mlp(4)
    for value, message in ((np.nan, "NaN or infinite"), (-1.0, "negative")):
        bad = x.copy()
        bad[-1, 0, 2, 3] = value
        with pytest.raises(InputError, match=message):
            run_compiled(g, bad, kernels=kernels)
    g, x = tiny_mlp(1, signed=True, n=41)
    for n in (40, 41):  # an odd batch does not reshape to the split channels
        bad = x[:n].copy()
        bad[-1, 0, 0, 0] = np.nan
        with pytest.raises(InputError, match=rf"index \({n - 1}, 0, 0, 0\)"):
            run_compiled(g, bad, kernels=kernels)


def test_a_dense_chain_passes_intensities_with_the_same_counts_and_records() -> None:
    """Raw inputs → Dense → Dense on the dense kernels (intensities passed along, never spike
    times) gives the event kernels' counts, recorded spikes and predictions."""
    g, x = small_mlp(5)
    plan = Plan(cutoffs=(0.6, 0.8))
    chained = run_compiled(g, x, plan, kernels="dense", record_spikes=True)
    event = run_compiled(g, x, plan, kernels="event", record_spikes=True)
    assert chained.stats.kernels == (DENSE, DENSE)
    assert sum(chained.stats.spikes) > 0
    assert chained.stats.layer_synaptic_ops == event.stats.layer_synaptic_ops
    assert chained.stats.spikes == event.stats.spikes
    assert chained.stats.saturated == event.stats.saturated
    for a, b in zip(chained.fired, event.fired, strict=True):  # type: ignore[arg-type]
        np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_array_equal(chained.logits.argmax(1), event.logits.argmax(1))


@pytest.mark.parametrize("n_out", [5, 37, 69])
@pytest.mark.parametrize("n_in", [37, 64, 150])
def test_the_batch_event_kernel_of_a_dense_layer_is_the_interpreter_s_scatter(
    n_in: int, n_out: int
) -> None:
    """kernels.scatter_batch: ``a @ W.T`` with one weight row per non-zero input, panel by
    panel, bit for bit the interpreter's scatter of the same sample (kernels._dense without a
    bias); 0 for a sample where nothing fired. Outputs: 5 (no whole panel), 37 (one panel of
    32 and 5 more), 69 (two panels, the second read from its own offset, and 5 more)."""
    from powersave.engine.simd import PANEL

    assert PANEL == 32  # the sizes above are chosen for it
    rng = np.random.default_rng(3)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    a = rng.random((7, n_in)).astype(np.float32)
    a[a < 0.6] = 0.0  # about 40 % fire
    a[1] = 0.0  # nothing fires
    a[2, :9] = 1.0
    a[2, 9:] = 0.0  # two groups of four and one more
    a[3, :] = 0.5  # every input fires: every group of eight packed whole
    a[4, :-6] = 0.0  # only the last few (the tail after the masks)
    wt = np.ascontiguousarray(w.T)
    row = np.zeros(k.N_COLUMNS, np.int64)
    row[k.IN_SIZE], row[k.OUT_SIZE], row[k.W_OFF], row[k.B_OFF] = n_in, n_out, 0, wt.size
    weights = np.concatenate([wt.ravel(), np.zeros(n_out, np.float32)])  # bias 0
    z = np.full((7, n_out), np.nan, np.float32)
    idx, val = np.empty(7 * n_in, np.int32), np.empty(7 * n_in, np.float32)
    k.scatter_batch(a, row, compiled.panel_layout(wt), z, idx, val, np.empty(8, np.int64))
    for s in range(7):
        fired = np.flatnonzero(a[s])
        one = np.empty(n_out, np.float32)
        k._dense(row, weights, len(fired), fired.astype(np.int64), a[s, fired], one)
        np.testing.assert_array_equal(z[s], one)
    np.testing.assert_allclose(z, a @ w.T, rtol=1e-5, atol=1e-5)
    assert not z[1].any()
    if n_in == 37:  # the intrinsic types its arrays: float64 panels are refused, not misread
        with pytest.raises(numba.core.errors.TypingError):
            k.scatter_batch(
                a, row, compiled.panel_layout(wt).astype(np.float64), z, idx, val,
                np.empty(8, np.int64),
            )  # fmt: skip


def test_the_batched_event_product_gives_the_same_numbers_on_any_number_of_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compiled._scatter_product splits the batch over threads, and each thread's block into
    chunks of SCATTER_CHUNK samples: the same float32 numbers."""
    rng = np.random.default_rng(4)
    a = rng.random((37, 30)).astype(np.float32)
    a[a < 0.7] = 0.0
    w = rng.standard_normal((30, 11)).astype(np.float32)  # W^T
    row = np.zeros(k.N_COLUMNS, np.int64)
    row[k.IN_SIZE], row[k.OUT_SIZE] = 30, 11
    panels = compiled.panel_layout(w)
    one = compiled._scatter_product(a, row, panels, 1)
    np.testing.assert_array_equal(compiled._scatter_product(a, row, panels, 3), one)
    monkeypatch.setattr(compiled, "SCATTER_CHUNK", 5)  # 37 samples: chunks of 5 and a rest
    np.testing.assert_array_equal(compiled._scatter_product(a, row, panels, 1), one)
    np.testing.assert_array_equal(compiled._scatter_product(a, row, panels, 2), one)
    np.testing.assert_allclose(one, a @ w, rtol=1e-5, atol=1e-5)


def test_the_planner_s_panel_is_the_kernel_s() -> None:
    """The cost model prices a batched Dense layer's outputs outside the kernel's panels apart:
    its panel width is the kernel's, and a 10-class readout (all outside) goes to BLAS."""
    from powersave.engine.simd import PANEL

    model = CostModel()
    assert model.panel == PANEL
    assert model.choose("dense", 256, 10, 2560, 0.7, batch=256) == DENSE
    assert model.choose("dense", 256, 256, 256 * 256, 0.2, batch=256) == EVENT


def test_the_kernels_carry_the_hash_of_their_intrinsics() -> None:
    """simd.py's intrinsics are compiled into kernels.py's cache entries, and numba checks only
    kernels.py's stamp: kernels.SIMD_SHA256 must be simd.py's hash, so that an edit of simd.py
    also edits kernels.py (and the stale kernels are rebuilt)."""
    import hashlib

    from powersave.engine import kernels, simd

    digest = hashlib.sha256(Path(simd.__file__).read_bytes()).hexdigest()
    assert kernels.SIMD_SHA256 == digest, (
        f"simd.py changed: set kernels.SIMD_SHA256 = {digest!r} (numba's cache of kernels.py "
        "would keep the old intrinsics)"
    )


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("positions", [np.int32, np.int64])
def test_eight_inputs_at_a_time_are_packed_in_order(
    avx2: bool, positions: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """simd.pack_nonzero and simd.pack_fired, with AVX2's vpermps or a lane at a time (as on a
    CPU without): for every one of the 256 patterns of eight inputs, the positions and values
    of those kept (not 0, NaN included; fired, ``t < inf``, NaN not), in order."""
    from powersave.engine import simd

    if avx2 and not simd.AVX2:
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setattr(simd, "AVX2", avx2)  # read when the kernels below are compiled

    @numba.njit(cache=False)
    def nonzero(x, idx, val):  # type: ignore[no-untyped-def]
        nf = 0
        for base in range(0, x.size, 8):
            nf = simd.pack_nonzero(x, base, idx, val, nf)
        return nf

    @numba.njit(cache=False)
    def fired(t, scale, end, idx, val):  # type: ignore[no-untyped-def]
        nf = 0
        for base in range(0, t.size, 8):
            nf = simd.pack_fired(t, base, scale, end, idx, val, nf)
        return nf

    rng = np.random.default_rng(5)
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1 == 1  # group m keeps m's bits
    x = np.where(bits, rng.uniform(-2, 2, bits.shape), 0.0).astype(np.float32).ravel()
    x[np.flatnonzero(x)[::50]] = np.nan  # NaN is not 0
    x[np.flatnonzero(x == 0)[::7]] = -0.0  # -0 is
    idx, val = np.full(x.size, -1, positions), np.full(x.size, np.nan, np.float32)
    nf = nonzero(x, idx, val)
    kept = np.flatnonzero(x != 0)
    assert nf == kept.size
    np.testing.assert_array_equal(idx[:nf], kept)
    np.testing.assert_array_equal(val[:nf], x[kept])

    scale, end = np.float32(1.7), np.float32(2.0)
    t = np.where(bits, rng.uniform(1.0, 2.0, bits.shape), np.inf).astype(np.float32).ravel()
    t[np.flatnonzero(np.isinf(t))[::9]] = np.nan  # never fired
    nf = fired(t, scale, end, idx, val)
    kept = np.flatnonzero(t < np.inf)
    assert nf == kept.size
    np.testing.assert_array_equal(idx[:nf], kept)
    np.testing.assert_array_equal(val[:nf], scale * (end - t[kept]))  # float32, as decode


@pytest.mark.parametrize("length", [0, 5, 8, 16, 37, 64, 80, 150])
def test_a_convolution_s_kernel_row_goes_through_its_channels_in_registers(length: int) -> None:
    """simd.conv_pass: ``acc[dst + j] += sum_c val[c] * weights[start + idx[c] * stride + j]``
    for the columns in whole vectors (blocks of 64, 16 and 8), the rest left to the caller and
    every other entry untouched; the channels added one after another in float32."""
    from powersave.engine import simd

    @numba.njit(cache=False)
    def run(weights, start, stride, length, nc, idx, val, acc, dst):  # type: ignore[no-untyped-def]
        return simd.conv_pass(weights, start, stride, length, nc, idx, val, acc, dst)

    rng = np.random.default_rng(length)
    stride, start, dst = length + 7, 3, 2
    weights = rng.standard_normal(3 + 9 * stride + length).astype(np.float32)
    for nc in (0, 1, 3, 8):
        idx = rng.permutation(9)[:8].astype(np.int64)
        val = rng.random(8).astype(np.float32)
        acc = rng.standard_normal(dst + length + 5).astype(np.float32)
        before = acc.copy()
        done = run(weights, start, stride, length, nc, idx, val, acc, dst)
        assert done == length - length % 8
        expected = before.copy()
        for c in range(nc):  # the same float32 operations, in the same order
            row = weights[start + idx[c] * stride : start + idx[c] * stride + done]
            expected[dst : dst + done] += val[c] * row
        np.testing.assert_array_equal(acc, expected)
