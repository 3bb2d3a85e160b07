"""Engine benchmark: the event engines side by side with dense PyTorch, on the bundled sample.

    python -m benchmarks.engine            # about 5 minutes on 2 cores (plus training, once)
    python -m benchmarks.engine --quick    # fewer repeats and samples: a smoke run

Trains (once; cached under ``out/bench/``) the reference networks of issue 4, the MLP
784-256-256-10 and the small CNN, converts them (scales at the 99.9th percentile on the
calibration split) and calibrates their modes; then measures, on the test split:

- per-sample latency at batch 1 and per-sample time (throughput) at batch 256, with 1 and with 2
  threads, as the median over repeats with the min and max;
- engines: PyTorch eager dense, the project's own numpy dense pass (``engine.dense.forward``),
  the numpy event engine (``run_events``), the compiled event engine in ``full``, ``balanced``
  and ``saver``, timed through ``Network.session(mode).predict`` (the serving path: set-up
  once, then the kernels; the planner's choices at batch 256) with operations counted by
  ``run_compiled``;
- for each: accuracy, synaptic operations per sample (dense MACs for the dense engines), the
  kernels the planner chose, and the peak RSS of a fresh process that ran only that engine;
- the times come from one process per network that runs every engine in turn within each
  repeat (interleaved), so that all of them see the same state of the shared machine, in a
  random order (seeded) in each repeat, so that no engine always follows the same one (in a
  fixed order, the same code measured 5-11 % slower timed right after PyTorch than later in
  the round); the ratios are what to read;
- cold start of a saved network (import, load, first inference) with a warm kernel cache, in a
  fresh process, and its peak RSS;
- the peer sinabs (rate-coded integrate-and-fire, ``sinabs.from_model``) when it is installed.

Prints a table and writes ``out/bench/engine.json``. Times are wall-clock on a shared machine:
read the ratios, not the absolute numbers. This is a measurement, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

OUT = Path("out/bench")
SCALE_PERCENTILE = 99.9
#: name → (architecture, training epochs)
MODELS = {
    "mlp": ("MLP 784-256-256-10", 15),
    "cnn": ("CNN conv5x5(8)-pool-conv5x5(16)-pool-64-10", 4),
}
#: engine label → (kind, mode)
ENGINES = {
    "torch-dense": ("torch", "full"),
    "numpy-dense": ("numpy-dense", "full"),
    "numpy-event full": ("numpy-event", "full"),
    "numpy-event balanced": ("numpy-event", "balanced"),
    "compiled full": ("compiled", "full"),
    "compiled balanced": ("compiled", "balanced"),
    "compiled saver": ("compiled", "saver"),
}
SEED = 0


# -- the reference networks (trained once, cached) ------------------------------------------------


def _paths(out: Path, name: str) -> tuple[Path, Path]:
    return out / f"{name}.safetensors", out / f"{name}.torch.safetensors"


def prepare(out: Path, *, retrain: bool = False) -> dict[str, dict[str, Any]]:
    """Train, convert and calibrate each reference network unless cached; return their facts."""
    out.mkdir(parents=True, exist_ok=True)
    facts: dict[str, dict[str, Any]] = {}
    for name, (architecture, epochs) in MODELS.items():
        net_path, torch_path = _paths(out, name)
        info_path = out / f"{name}.json"
        if retrain or not (net_path.exists() and torch_path.exists() and info_path.exists()):
            print(f"[bench] training {architecture} ({epochs} epochs), once", flush=True)
            facts[name] = _train(name, epochs, net_path, torch_path)
            info_path.write_text(json.dumps(facts[name], indent=2))
        else:
            facts[name] = json.loads(info_path.read_text())
    return facts


def _train(name: str, epochs: int, net_path: Path, torch_path: Path) -> dict[str, Any]:
    import safetensors.torch

    import powersave
    from powersave.data import load_mnist10k
    from powersave.frontend import mlp, small_cnn, train_classifier
    from powersave.frontend.train import evaluate_accuracy

    splits = load_mnist10k()
    model = mlp(seed=SEED) if name == "mlp" else small_cnn(seed=SEED)
    start = time.perf_counter()
    train_classifier(
        model, splits.train.x, splits.train.y, epochs=epochs, seed=SEED, progress=False
    )
    trained = time.perf_counter() - start
    safetensors.torch.save_file(model.state_dict(), str(torch_path))
    net = powersave.convert(model, splits.calibration.x, percentile=SCALE_PERCENTILE)
    start = time.perf_counter()
    net = net.calibrate(splits.calibration.x, splits.calibration.y, progress=False)
    calibrated = time.perf_counter() - start
    powersave.save(net, net_path)
    return {
        "architecture": MODELS[name][0],
        "epochs": epochs,
        "training_seconds": trained,
        "calibration_seconds": calibrated,
        "torch_test_accuracy": evaluate_accuracy(model, splits.test.x, splits.test.y),
        "modes": {m: net.plan(m).to_dict() for m in net.modes},
    }


# -- one engine, measured in a fresh process ------------------------------------------------------


def load_trained(name: str = "mlp") -> nn.Sequential:
    """The trained PyTorch model the engine benchmark caches, in eval mode.

    Raises:
        ValueError: ``name`` is not one of the benchmark's networks.
        FileNotFoundError: the benchmark has not trained it yet.
    """
    import safetensors.torch

    from powersave.frontend import mlp, small_cnn

    if name not in MODELS:
        raise ValueError(f"unknown network {name!r}; the benchmark's are {sorted(MODELS)}")
    path = _paths(OUT, name)[1]
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the engine benchmark trains and caches it; run "
            "`python -m benchmarks.engine --quick` (from the repository root) once"
        )
    model = mlp() if name == "mlp" else small_cnn()
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    return model.eval()


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MB.

    On Linux the high-water mark of the current address space (``VmHWM``): ``ru_maxrss``
    carries over ``exec``, so in a child started by a process that had grown larger it reports
    the parent's peak, not the child's.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _set_threads(threads: int) -> Any:
    """Limit every thread pool an engine may use; returns the threadpoolctl context to keep."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS keeps its own thread count: the dense rows are then not 1-thread
        limits = None
    else:
        limits = threadpool_limits(threads)
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    return limits


def _engine_function(kind: str, name: str, net: Any, mode: str) -> tuple[Any, Any]:
    """Two functions for one engine and mode: ``timed(x) -> predictions`` (what is timed) and
    ``count(x) -> (predictions, synaptic operations)`` (accuracy and operations, untimed)."""
    graph = net.graph
    if kind == "torch":
        import torch

        model = load_trained(name)

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).argmax(1).numpy()

        return run_torch, lambda x: (run_torch(x), float("nan"))
    if kind == "numpy-dense":
        from powersave.engine import dense

        def run_dense(x: np.ndarray) -> np.ndarray:
            return dense.forward(graph, x).logits.argmax(1)

        return run_dense, lambda x: (run_dense(x), float("nan"))
    from powersave.engine.event import graph_costs, run_events

    costs = graph_costs(graph)
    plan = net.plan(mode)
    if kind == "numpy-event":

        def run_numpy(x: np.ndarray) -> np.ndarray:
            return run_events(graph, x, plan, costs=costs, baselines=False).logits.argmax(1)

        def count_numpy(x: np.ndarray) -> tuple[np.ndarray, float]:
            result = run_events(graph, x, plan, costs=costs, baselines=False)
            return result.logits.argmax(1), float(result.stats.synaptic_ops)

        return run_numpy, count_numpy
    # The compiled engine is timed through the serving API, a Session (set-up done once); the
    # operations are counted by run_compiled, whose planner then knows the plan's activity.
    from powersave.engine.compiled import run_compiled

    session = net.session(mode, engine="compiled")

    def count_compiled(x: np.ndarray) -> tuple[np.ndarray, float]:
        result = run_compiled(graph, x, plan, costs=costs, baselines=False)
        return result.logits.argmax(1), float(result.stats.synaptic_ops)

    def kernels(x: np.ndarray) -> list[str]:
        return list(run_compiled(graph, x, plan, costs=costs, baselines=False).stats.kernels)

    count_compiled.kernels = kernels  # type: ignore[attr-defined]
    return session.predict, count_compiled


def _times(fn: Any, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Microseconds per sample over all ``batches``: median, min and max over ``repeats``."""
    return _interleaved({"": fn}, batches, repeats)[""]


def _interleaved(
    functions: dict[str, Any], batches: list[np.ndarray], repeats: int
) -> dict[str, dict[str, float]]:
    """:func:`_times` of several functions, which take turns within each repeat, in a new
    random order each repeat (seeded: the same orders in every run)."""
    for fn in functions.values():  # warm up (and compile, on a cold cache)
        for xb in batches[:3]:
            fn(xb)
    samples = sum(len(xb) for xb in batches)
    wall: dict[str, list[float]] = {label: [] for label in functions}
    cpu: dict[str, list[float]] = {label: [] for label in functions}
    order = list(functions)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for label in order:
            fn = functions[label]
            start, start_cpu = time.perf_counter(), time.process_time()
            for xb in batches:
                fn(xb)
            wall[label].append((time.perf_counter() - start) / samples * 1e6)
            cpu[label].append((time.process_time() - start_cpu) / samples * 1e6)
    return {label: _summary(wall[label], cpu[label]) for label in functions}


def _summary(per_sample: list[float], cpu: list[float]) -> dict[str, float]:
    return {
        "median_us": statistics.median(per_sample),
        "min_us": min(per_sample),
        "max_us": max(per_sample),
        # CPU time of the process (all its threads): on a shared machine the wall-clock time
        # also counts waiting for a core; with 1 thread this is the cleaner number.
        "cpu_median_us": statistics.median(cpu),
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, operations, kernels and peak RSS of one engine kind on one network, in every
    mode of ``spec``; runs in a subprocess of its own (for an honest peak RSS)."""
    import powersave
    from powersave.data import load_mnist10k

    name, kind = spec["net"], spec["kind"]
    net = powersave.load(_paths(OUT, name)[0])
    test = load_mnist10k().test
    x, y = test.x, test.y
    batch = spec["batch"]
    limits = _set_threads(1)
    results: dict[str, dict[str, Any]] = {}
    for mode in spec["modes"]:
        fn, count = _engine_function(kind, name, net, mode)
        record: dict[str, Any] = {}
        predictions, ops = [], 0.0
        for i in range(0, len(x), batch):  # accuracy and operations on the whole test split
            p, o = count(x[i : i + batch])
            predictions.append(p)
            ops += o
        fn(x[:batch])  # the timed path once, so that its memory counts too
        fn(x[:1])
        record["accuracy"] = float(np.mean(np.concatenate(predictions) == y))
        record["synaptic_ops_per_sample"] = ops / len(x) if ops == ops else None
        if getattr(count, "kernels", None):
            record["kernels"] = {
                "batch_1": count.kernels(x[:1]),
                f"batch_{batch}": count.kernels(x[:batch]),
            }
        results[mode] = record
    if limits is not None:
        limits.unregister()
    return {"peak_rss_mb": peak_rss_mb(), **results}


def timing_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time every engine on one network in one process, interleaved: each repeat runs every
    engine once, in turn, so that all of them see the same state of a shared, noisy machine
    and their ratios are robust. At 1 thread first, then at more (pools that ran with several
    threads keep spinning for a while, which slows a single thread on shared cores)."""
    import powersave
    from powersave.data import load_mnist10k

    name, batch = spec["net"], spec["batch"]
    net = powersave.load(_paths(OUT, name)[0])
    x = load_mnist10k().test.x
    latency = [x[i : i + 1] for i in range(spec["latency_samples"])]
    throughput = [x[i : i + batch] for i in range(0, spec["throughput_batches"] * batch, batch)]
    functions = {
        label: _engine_function(kind, name, net, mode)[0] for label, (kind, mode) in ENGINES.items()
    }
    results: dict[str, dict[str, Any]] = {label: {} for label in functions}
    for threads in sorted(spec["threads"]):
        limits = _set_threads(threads)
        for key, batches in (
            (f"batch_1_threads_{threads}", latency),
            (f"batch_{batch}_threads_{threads}", throughput),
        ):
            for label, times in _interleaved(functions, batches, spec["repeats"]).items():
                results[label][key] = times
        if limits is not None:
            limits.unregister()
    return results


def _subprocess(
    args: list[str], timeout: float = 900, env: dict[str, str] | None = None
) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {args[:3]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- cold start -----------------------------------------------------------------------------------

_COLD = """
import time
start = time.perf_counter()
import json, sys

import numpy as np
import powersave
imported = time.perf_counter()
net = powersave.load(sys.argv[1])
loaded = time.perf_counter()
x = np.load(sys.argv[2])
net.session("balanced").predict(x)
first = time.perf_counter()
from benchmarks.engine import peak_rss_mb  # after the timing; imports only what ran above
print(json.dumps({
    "import_s": imported - start,
    "load_s": loaded - imported,
    "first_inference_s": first - loaded,
    "in_process_s": first - start,
    "peak_rss_mb": peak_rss_mb(),
    "torch_imported": "torch" in sys.modules,
    "matplotlib_imported": "matplotlib" in sys.modules,
}))
"""


def cold_start(name: str) -> dict[str, Any]:
    """Import, load and first inference in a fresh process, with a warm kernel cache."""
    from powersave.data import load_mnist10k

    sample = OUT / "cold_sample.npy"
    np.save(sample, load_mnist10k().test.x[:1])
    args = ["-c", _COLD, str(_paths(OUT, name)[0]), str(sample)]
    _subprocess(args)  # warms the kernel cache if it is cold
    start = time.perf_counter()
    record = _subprocess(args)
    record["wall_s"] = time.perf_counter() - start  # interpreter start-up included
    return record


# -- the run --------------------------------------------------------------------------------------


def _sinabs() -> dict[str, Any]:
    """The spiking peer (benchmarks/peer.py), or why it was not measured."""
    from benchmarks.peer import sinabs_peer

    print("[bench] mlp: the sinabs peer", flush=True)
    return sinabs_peer(progress=None)


def measure(quick: bool) -> dict[str, Any]:
    facts = prepare(OUT)
    threads = [1, 2]
    spec_base = {
        "batch": 256,
        "threads": threads,
        "repeats": 3 if quick else 9,  # 9: a random order widens the spread
        "latency_samples": 40 if quick else 200,
        "throughput_batches": 2 if quick else 7,
    }
    kinds: dict[str, list[str]] = {}
    for kind, mode in ENGINES.values():
        kinds.setdefault(kind, []).append(mode)
    results: dict[str, Any] = {}
    for name in MODELS:
        results[name] = {"facts": facts[name], "engines": {}}
        for kind, modes in kinds.items():
            print(f"[bench] {name}: {kind} ({', '.join(modes)})", flush=True)
            spec = {**spec_base, "net": name, "kind": kind, "modes": modes}
            measured = _subprocess(["-m", "benchmarks.engine", "--worker", json.dumps(spec)])
            rss = measured.pop("peak_rss_mb")
            for mode, record in measured.items():
                label = next(k for k, v in ENGINES.items() if v == (kind, mode))
                results[name]["engines"][label] = {**record, "peak_rss_mb": rss}
        print(f"[bench] {name}: timing every engine, interleaved", flush=True)
        spec = {**spec_base, "net": name}
        # Idle OpenMP threads (PyTorch's) sleep instead of spinning: interleaved with other
        # engines, spinning threads would take their cores.
        timed = _subprocess(
            ["-m", "benchmarks.engine", "--timing", json.dumps(spec)],
            3600,
            env={"OMP_WAIT_POLICY": "PASSIVE"},
        )
        for label, times in timed.items():
            results[name]["engines"][label].update(times)
        print(f"[bench] {name}: cold start", flush=True)
        results[name]["cold_start"] = cold_start(name)
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        },
        "settings": {**spec_base, "quick": quick},
        "networks": results,
        "sinabs": _sinabs(),
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured at 1 thread: met or missed, with the numbers."""
    out = []
    for name, res in report["networks"].items():
        e = res["engines"]

        def t(label: str, batch: int, e: dict[str, Any] = e) -> float:
            return e[label][f"batch_{batch}_threads_1"]["median_us"]

        torch1, own1 = t("torch-dense", 1), t("numpy-dense", 1)
        torch256, own256 = t("torch-dense", 256), t("numpy-dense", 256)
        bal1, bal256 = t("compiled balanced", 1), t("compiled balanced", 256)
        full1, full256 = t("compiled full", 1), t("compiled full", 256)
        rows = [
            ("batch 1 balanced ≥ 5× faster than PyTorch dense", torch1 / bal1, 5.0),
            ("batch 1 balanced ≥ 2× faster than own dense", own1 / bal1, 2.0),
            ("batch 256 balanced throughput ≥ PyTorch dense", torch256 / bal256, 1.0),
            ("batch 1 full ≤ 1.1× the best dense", min(torch1, own1) / full1, 1 / 1.1),
            ("batch 256 full ≤ 1.1× the best dense", min(torch256, own256) / full256, 1 / 1.1),
        ]
        for what, ratio, goal in rows:
            out.append(
                {"network": name, "target": what, "speed_ratio": ratio, "met": ratio >= goal}
            )
        cold = res["cold_start"]
        out.append(
            {
                "network": name,
                "target": "cold start < 3 s (warm kernel cache)",
                "seconds": cold["wall_s"],
                "met": cold["wall_s"] < 3.0,
            }
        )
        out.append(
            {
                "network": name,
                "target": "inference-only peak RSS < 300 MB",
                "mb": cold["peak_rss_mb"],
                "met": cold["peak_rss_mb"] < 300,
            }
        )
    return out


def table(report: dict[str, Any]) -> str:
    lines = []
    for res in report["networks"].values():
        e = res["engines"]
        lines.append(f"\n{res['facts']['architecture']} — per-sample µs, median (×PyTorch)")
        head = f"{'engine':22} {'acc %':>6} {'ops/sample':>11} {'RSS MB':>7}"
        for batch in (1, 256):
            for threads in (1, 2):
                head += f" {f'b{batch} {threads}T':>17}"
        lines.append(head)
        for label, record in e.items():
            ops = record["synaptic_ops_per_sample"]
            row = f"{label:22} {100 * record['accuracy']:6.2f} "
            row += f"{(f'{ops:,.0f}' if ops else 'dense'):>11} {record['peak_rss_mb']:7.0f}"
            for batch in (1, 256):
                for threads in (1, 2):
                    key = f"batch_{batch}_threads_{threads}"
                    ours = record[key]["median_us"]
                    ratio = e["torch-dense"][key]["median_us"] / ours
                    row += f" {ours:9.1f} ({ratio:4.2f}×)"
            lines.append(row)
        kernels = e["compiled full"].get("kernels", {})
        lines.append(f"planner (compiled full): {kernels}")
        cold = res["cold_start"]
        lines.append(
            f"cold start: {cold['wall_s']:.2f} s wall (import {cold['import_s']:.2f}, load "
            f"{cold['load_s']:.3f}, first inference {cold['first_inference_s']:.2f}), "
            f"peak RSS {cold['peak_rss_mb']:.0f} MB, torch imported: {cold['torch_imported']}"
        )
    lines.append("\ntargets (1 thread):")
    for t in report["targets"]:
        value = t.get("speed_ratio")
        shown = f"{value:.2f}×" if value is not None else f"{t.get('seconds', t.get('mb')):.2f}"
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"  [{verdict}] {t['network']}: {t['target']}: {shown}")
    peer = report["sinabs"]
    if peer.get("available"):
        lines.append(
            f"sinabs peer (MLP, rate-coded IAF, {peer['encoding']} input): "
            f"{peer['steps_needed']} steps for {100 * peer['accuracy']:.2f} % "
            f"(ANN {100 * peer['ann_accuracy']:.2f} %), "
            f"{peer['synaptic_ops_per_sample']:,.0f} synaptic ops/sample, "
            f"{peer['batch_1_us']:.0f} µs/sample at batch 1, {peer['batch_256_us']:.1f} at 256"
        )
    else:
        lines.append(f"sinabs peer not measured: {peer.get('reason')} ({peer.get('install')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    parser.add_argument("--retrain", action="store_true", help="train the networks again")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--timing", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.timing:
        print(json.dumps(timing_worker(json.loads(args.timing))))
        return 0
    if args.retrain:
        prepare(OUT, retrain=True)
    start = time.perf_counter()
    report = measure(args.quick)
    report["targets"] = targets(report)
    report["seconds"] = time.perf_counter() - start
    (OUT / "engine.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nwrote {OUT / 'engine.json'} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
