"""The spiking peer of the engine benchmark: sinabs, rate-coded integrate-and-fire.

    python -m benchmarks.peer                  # 1-2 minutes on 2 cores, 1 thread
    python -m benchmarks.peer --samples 500    # a subsample of the test split: a smoke run

Converts the MLP that ``python -m benchmarks.engine`` trains and caches
(``out/bench/mlp.torch.safetensors``) with ``sinabs.from_torch.from_model``: every ReLU becomes
an integrate-and-fire neuron (sinabs' defaults: ``IAFSqueeze``, threshold 1, reset by
subtraction, several spikes per step allowed); the readout Linear stays non-spiking and its
output summed over the time steps (about steps × the ANN's logits) gives the class. Before
conversion each layer's weights are normalised on the *calibration* split (Rueckauer et al.
2017: the layer's activation scale is the 99.9th percentile of its positive ReLU outputs, the
scale the project's own conversion uses). The input is a constant current (the pixel
intensities every step) or Bernoulli spike trains; with ``--encoding auto`` (the default) both
are swept and the one within tolerance in fewer steps is reported (a tie: the more accurate).

For each number of time steps it measures the test-split accuracy and the synaptic operations
per sample (sinabs' own counter, ``sinabs.hooks.register_synops_hooks``); the answer is the
smallest number of steps whose accuracy is within ``tolerance_pp`` percentage points of the ANN's
(the same model run densely in PyTorch). At that number of steps a fresh process measures the
time per sample at batch 1 and batch 256 (median over repeats, like the engine rows) and its
peak RSS. Prints a table and writes ``out/bench/peer.json``.

sinabs is optional and not a dependency of the project: 3.1.3 pins ``nir<=1.0.4`` and pulls
``samna``, so install it without its dependencies: ``pip install --no-deps sinabs pbr
nirtorch`` (it then needs only torch, numpy and matplotlib, which the ``dev`` extra has).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.engine import (
    MODELS,
    OUT,
    SCALE_PERCENTILE,
    _set_threads,
    _subprocess,
    _times,
    load_trained,
    peak_rss_mb,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

INSTALL = "pip install --no-deps sinabs pbr nirtorch"
ENCODINGS = ("current", "bernoulli")
NORMALISATIONS = ("layerwise", "sinabs")
STEPS = (2, 4, 6, 8, 16, 32, 64, 128, 256)
BATCH = 256
#: at most this many (sample, step) rows per forward pass in the sweep, to bound memory
MAX_ROWS = 32_768
SEED = 0


# -- availability and the trained model ----------------------------------------------------------


def unavailable() -> str | None:
    """Why sinabs cannot be used here, or None when it can."""
    import importlib

    try:
        for module in ("sinabs", "sinabs.from_torch", "sinabs.hooks"):
            importlib.import_module(module)
    except Exception as error:  # ImportError, or a missing dependency of sinabs (matplotlib)
        return f"sinabs is not importable: {type(error).__name__}: {error}"
    return None


# -- conversion -----------------------------------------------------------------------------------


def _has_weight(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear | nn.Conv2d)


def normalise(
    model: nn.Sequential,
    x: np.ndarray,
    *,
    percentile: float = SCALE_PERCENTILE,
    method: str = "layerwise",
) -> tuple[nn.Sequential, list[float]]:
    """A copy of ``model`` with data-based weight normalisation; also the activation scales.

    ``layerwise`` (Rueckauer et al. 2017, function-preserving): with ``λ_l`` the
    ``percentile``-th percentile of layer ``l``'s positive ReLU outputs on ``x`` (``λ_0 = 1``:
    the pixels are in ``[0, 1]``), the weights become ``W_l λ_{l-1} / λ_l`` and the biases
    ``b_l / λ_l``, so every hidden activation is divided by its ``λ_l`` and a rate of one spike
    per step stands for ``λ_l``; the readout keeps ``λ_L = 1`` (its logits in the ANN's units).

    ``sinabs``: ``sinabs.utils.normalize_weights`` on every parametrised layer followed by a
    ReLU, with the same percentile but of *all* outputs, zeros included. It scales weights and
    biases of a layer by the same factor measured on the already normalised layers below, which
    is not function-preserving when the biases are not zero.
    """
    import torch
    from torch import nn

    if method not in NORMALISATIONS:
        raise ValueError(f"method must be one of {NORMALISATIONS}, got {method!r}")
    model = copy.deepcopy(model).eval()
    layers: list[Any] = list(model)
    relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
    params = [i for i, m in enumerate(layers) if _has_weight(m)]
    data = torch.from_numpy(np.array(x, dtype=np.float32))
    if method == "sinabs":
        from sinabs.utils import normalize_weights

        pairs = [(max(p for p in params if p < r), r) for r in relus]
        with torch.no_grad():
            before = [float(layers[p].weight.norm()) for p, _ in pairs]
            normalize_weights(
                model,
                data,
                output_layers=[str(r) for _, r in pairs],
                param_layers=[str(p) for p, _ in pairs],
                percentile=percentile,
            )
            after = [float(layers[p].weight.norm()) for p, _ in pairs]
        # the factor each layer was divided by
        return model, [b / a for b, a in zip(before, after, strict=True)]
    by_relu = dict(zip(relus, _relu_scales(model, data, relus, percentile), strict=True))
    previous = 1.0
    with torch.no_grad():
        for i in params:
            # the scale of this layer's output: that of the ReLU that follows it, if any
            nxt = next((j for j in range(i + 1, len(layers)) if j in by_relu or j in params), None)
            scale = by_relu.get(nxt, 1.0) if nxt is not None else 1.0
            layer = layers[i]
            layer.weight.mul_(previous / scale)
            if layer.bias is not None:
                layer.bias.div_(scale)
            previous = scale
    scales = list(by_relu.values())
    return model, scales


def _relu_scales(
    model: nn.Sequential, data: torch.Tensor, relus: list[int], percentile: float
) -> list[float]:
    """The ``percentile``-th percentile of each ReLU's positive outputs on ``data``."""
    import torch

    outputs: dict[int, np.ndarray] = {}
    handles = []
    for i in relus:

        def keep(_m: Any, _i: Any, out: torch.Tensor, i: int = i) -> None:
            outputs[i] = out.detach().numpy().ravel().copy()

        handles.append(model[i].register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(data)
    finally:
        for handle in handles:
            handle.remove()
    scales = []
    for i in relus:
        values = outputs[i][outputs[i] > 0]
        scales.append(float(np.percentile(values, percentile)) if values.size else 1.0)
    return scales


def to_spiking(model: nn.Sequential, steps: int, *, synops: bool = False) -> Any:
    """``sinabs.from_torch.from_model`` with sinabs' defaults, for ``steps`` steps a sample.

    Inputs are ``(batch × steps, ...)`` with each sample's steps consecutive; the batch size is
    free. With ``synops`` sinabs' synaptic-operation hooks are registered on the network.
    """
    import sinabs.from_torch
    import sinabs.hooks

    network = sinabs.from_torch.from_model(model, num_timesteps=steps, add_spiking_output=False)
    network.eval()
    if synops:
        sinabs.hooks.register_synops_hooks(network.spiking_model)
    return network


def encode(
    x: torch.Tensor, steps: int, encoding: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(N, ...)`` intensities in ``[0, 1]`` → ``(N × steps, ...)`` inputs, a sample's steps
    consecutive: the intensities at every step (``current``) or spikes with probability the
    intensity at every step (``bernoulli``)."""
    import torch

    repeated = x.unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:])
    if encoding == "current":
        return repeated.reshape(-1, *x.shape[1:])
    if encoding == "bernoulli":
        noise = torch.rand(repeated.shape, generator=generator)
        return (noise < repeated).to(x.dtype).reshape(-1, *x.shape[1:])
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def classify(
    network: Any,
    x: torch.Tensor,
    steps: int,
    encoding: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Predicted classes of a batch: the readout summed over the ``steps`` steps, argmax."""
    import torch

    network.reset_states()
    with torch.no_grad():
        out = network(encode(x, steps, encoding, generator))
    return out.reshape(x.shape[0], steps, -1).sum(1).argmax(1)


def evaluate(
    model: nn.Sequential,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    encoding: str,
) -> dict[str, Any]:
    """Accuracy and synaptic operations per sample (sinabs' counter) of the converted model."""
    import torch

    network = to_spiking(model, steps, synops=True)
    generator = torch.Generator().manual_seed(SEED)
    batch = max(1, min(BATCH, MAX_ROWS // steps))
    correct, total = 0, 0.0
    per_layer: dict[str, float] = {}
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.array(x[i : i + batch], dtype=np.float32))
        predicted = classify(network, xb, steps, encoding, generator)
        correct += int((predicted.numpy() == y[i : i + batch]).sum())
        data = network.spiking_model.hook_data
        # sinabs averages over the (sample, step) rows of the pass: × steps × samples
        total += float(data["total_synops_per_timestep"]) * steps * len(xb)
        for layer, ops in data["synops_per_timestep"].items():
            name = f"{layer} ({type(network.spiking_model[layer]).__name__})"
            per_layer[name] = per_layer.get(name, 0.0) + float(ops) * steps * len(xb)
    return {
        "steps": steps,
        "accuracy": correct / len(x),
        "synaptic_ops_per_sample": total / len(x),
        "synaptic_ops_per_layer": {k: v / len(x) for k, v in per_layer.items()},
    }


def _needed(sweep: list[dict[str, Any]], ann: float, tolerance_pp: float) -> dict[str, Any] | None:
    """The sweep entry with the fewest steps within ``tolerance_pp`` of ``ann``, or None."""
    within = [s for s in sweep if 100 * (ann - s["accuracy"]) <= tolerance_pp + 1e-9]
    return min(within, key=lambda s: s["steps"]) if within else None


# -- timing, in a fresh process ------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the converted model at ``spec["steps"]``; runs alone in a subprocess (peak RSS)."""
    import torch

    from powersave.data import load_mnist10k

    _set_threads(spec["threads"])
    data = load_mnist10k()
    model, _ = normalise(
        load_trained(spec["net"]),
        data.calibration.x,
        percentile=spec["percentile"],
        method=spec["normalisation"],
    )
    network = to_spiking(model, spec["steps"])
    generator = torch.Generator().manual_seed(SEED)
    x = np.array(data.test.x, dtype=np.float32)  # writable: torch warns on read-only arrays

    def run(xb: np.ndarray) -> torch.Tensor:
        return classify(network, torch.from_numpy(xb), spec["steps"], spec["encoding"], generator)

    latency = [x[i : i + 1] for i in range(spec["latency_samples"])]
    batch = spec["batch"]
    throughput = [x[i : i + batch] for i in range(0, spec["throughput_batches"] * batch, batch)]
    record: dict[str, Any] = {
        "batch_1": _times(run, latency, spec["repeats"]),
        f"batch_{batch}": _times(run, throughput, spec["repeats"]),
    }
    record["peak_rss_mb"] = peak_rss_mb()
    return record


# -- the peer -------------------------------------------------------------------------------------


def sinabs_peer(
    name: str = "mlp",
    *,
    tolerance_pp: float = 0.5,
    steps: Sequence[int] = STEPS,
    threads: int = 1,
    samples: int | None = None,
    encoding: str = "auto",
    normalisation: str = "layerwise",
    percentile: float = SCALE_PERCENTILE,
    latency_samples: int = 100,
    throughput_batches: int = 2,
    repeats: int = 3,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Measure the sinabs peer of the benchmark's network ``name``; a JSON-able dict.

    Args:
        name: a network of the engine benchmark (trained and cached by it).
        tolerance_pp: how close to the ANN's test accuracy, in percentage points, is close
            enough.
        steps: the numbers of time steps swept.
        threads: torch (and BLAS) threads, for the sweep and the timing.
        samples: the first ``samples`` of the test split only (the ANN is measured on the same
            ones); None for all of them.
        encoding: ``current``, ``bernoulli``, or ``auto``: sweep both and report the one within
            tolerance in fewer steps (ties: the more accurate there).
        normalisation: ``layerwise`` or ``sinabs`` (see :func:`normalise`).
        percentile: of the activations, for the normalisation (on the calibration split).
        latency_samples: samples timed one by one at batch 1.
        throughput_batches: batches of 256 timed.
        repeats: timing repeats (the median is reported, with min and max).
        progress: called with a line per step of the sweep; None for silence.

    Returns:
        ``{"available": False, "reason", "install"}`` when sinabs cannot be imported; otherwise
        ``available``, ``version``, ``encoding``, ``normalisation``, ``ann_accuracy``,
        ``steps_needed`` (None when no swept number of steps comes within tolerance: the other
        numbers are then those of the largest one), ``accuracy``, ``synaptic_ops_per_sample``,
        ``batch_1_us``, ``batch_256_us`` (median wall-clock µs per sample), ``peak_rss_mb``,
        ``sweep`` (the reported encoding's ``steps``, ``accuracy``,
        ``synaptic_ops_per_sample``), and the details (``sweeps`` of every encoding tried, with
        per-layer operations; ``timing``; ``scales``; ``settings``).
    """
    reason = unavailable()
    if reason is not None:
        return {"available": False, "reason": reason, "install": INSTALL}
    import sinabs

    from powersave.data import load_mnist10k
    from powersave.frontend.train import evaluate_accuracy

    say = progress or (lambda _line: None)
    encodings = ENCODINGS if encoding == "auto" else (encoding,)
    if any(e not in ENCODINGS for e in encodings):
        raise ValueError(f"encoding must be 'auto' or one of {ENCODINGS}, got {encoding!r}")
    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps}")
    start = time.perf_counter()
    limits = _set_threads(threads)
    data = load_mnist10k()
    x, y = data.test.x[:samples], data.test.y[:samples]
    trained = load_trained(name)
    ann = evaluate_accuracy(trained, x, y)
    model, scales = normalise(
        trained, data.calibration.x, percentile=percentile, method=normalisation
    )
    say(
        f"[peer] {name}: ANN {100 * ann:.2f} % on {len(x)} test samples; "
        f"{normalisation} normalisation, scales {[round(s, 3) for s in scales]}"
    )
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for enc in encodings:
        sweeps[enc] = []
        for t in steps:
            began = time.perf_counter()
            entry = evaluate(model, x, y, t, enc)
            entry["seconds"] = time.perf_counter() - began
            sweeps[enc].append(entry)
            say(
                f"[peer] {enc:9} T={t:4}: {100 * entry['accuracy']:6.2f} %, "
                f"{entry['synaptic_ops_per_sample']:12,.0f} synops/sample "
                f"({entry['seconds']:.1f} s)"
            )
    if limits is not None:
        limits.unregister()

    def rank(enc: str) -> tuple[float, float, int]:
        """Fewer steps needed first, then the higher accuracy there (the best of the sweep
        when none is within tolerance), then the deterministic ``current``."""
        hit = _needed(sweeps[enc], ann, tolerance_pp)
        if hit is None:
            return (float("inf"), -max(s["accuracy"] for s in sweeps[enc]), encodings.index(enc))
        return (hit["steps"], -hit["accuracy"], encodings.index(enc))

    chosen = min(encodings, key=rank)
    hit = _needed(sweeps[chosen], ann, tolerance_pp)
    at = hit if hit is not None else sweeps[chosen][-1]
    say(f"[peer] timing {chosen} at T={at['steps']} in a fresh process")
    spec = {
        "net": name,
        "steps": at["steps"],
        "encoding": chosen,
        "normalisation": normalisation,
        "percentile": percentile,
        "threads": threads,
        "batch": BATCH,
        "latency_samples": latency_samples,
        "throughput_batches": throughput_batches,
        "repeats": repeats,
    }
    timing = _subprocess(["-m", "benchmarks.peer", "--worker", json.dumps(spec)])
    return {
        "available": True,
        "version": sinabs.__version__,
        "network": MODELS[name][0],
        "encoding": chosen,
        "normalisation": f"{normalisation}, {percentile}th percentile, calibration split",
        "neuron": "sinabs IAFSqueeze defaults: threshold 1, MultiSpike, MembraneSubtract, "
        "min_v_mem -1; readout Linear non-spiking, summed over steps",
        "ann_accuracy": ann,
        "tolerance_pp": tolerance_pp,
        "steps_needed": hit["steps"] if hit is not None else None,
        "accuracy": at["accuracy"],
        "synaptic_ops_per_sample": at["synaptic_ops_per_sample"],
        "synaptic_ops_per_layer": at["synaptic_ops_per_layer"],
        "batch_1_us": timing["batch_1"]["median_us"],
        f"batch_{BATCH}_us": timing[f"batch_{BATCH}"]["median_us"],
        "peak_rss_mb": timing["peak_rss_mb"],
        "sweep": [
            {k: s[k] for k in ("steps", "accuracy", "synaptic_ops_per_sample")}
            for s in sweeps[chosen]
        ],
        "sweeps": sweeps,
        "timing": timing,
        "scales": scales,
        "settings": {
            "samples": len(x),
            "threads": threads,
            "encodings_tried": list(encodings),
            **{k: spec[k] for k in ("latency_samples", "throughput_batches", "repeats")},
        },
        "seconds": time.perf_counter() - start,
    }


def table(result: dict[str, Any]) -> str:
    """The result as a few lines of text."""
    if not result["available"]:
        return f"sinabs peer not measured: {result['reason']}\ninstall: {result['install']}"
    lines = [
        f"sinabs {result['version']} peer of the {result['network']}: {result['encoding']} input; "
        f"normalisation {result['normalisation']}; ANN {100 * result['ann_accuracy']:.2f} % "
        f"on {result['settings']['samples']} test samples",
        f"{'encoding':10} {'steps':>5} {'acc %':>6} {'Δ pp':>6} {'synops/sample':>14}",
    ]
    for enc, sweep in result["sweeps"].items():
        for s in sweep:
            delta = 100 * (s["accuracy"] - result["ann_accuracy"])
            lines.append(
                f"{enc:10} {s['steps']:5} {100 * s['accuracy']:6.2f} {delta:+6.2f} "
                f"{s['synaptic_ops_per_sample']:14,.0f}"
            )
    needed = result["steps_needed"]
    lines.append(
        f"steps needed (within {result['tolerance_pp']} pp): "
        + (f"{needed}" if needed is not None else "none of the swept (timed at the largest)")
    )
    t = result["timing"]
    lines.append(
        f"per-sample µs at that T, {result['settings']['threads']} thread(s): batch 1 "
        f"{t['batch_1']['median_us']:,.0f} (min {t['batch_1']['min_us']:,.0f}), batch {BATCH} "
        f"{t[f'batch_{BATCH}']['median_us']:,.0f} (min {t[f'batch_{BATCH}']['min_us']:,.0f}); "
        f"peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    return "\n".join(lines)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically: a temporary file next to it, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer", description=__doc__)
    parser.add_argument("--net", default="mlp", choices=sorted(MODELS))
    parser.add_argument("--samples", type=int, help="first N test samples only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance-pp", type=float, default=0.5)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--encoding", default="auto", choices=["auto", *ENCODINGS])
    parser.add_argument("--normalisation", default="layerwise", choices=NORMALISATIONS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    try:
        result = sinabs_peer(
            args.net,
            tolerance_pp=args.tolerance_pp,
            steps=args.steps,
            threads=args.threads,
            samples=args.samples,
            encoding=args.encoding,
            normalisation=args.normalisation,
        )
    except FileNotFoundError as error:  # the benchmark has not trained the network yet
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = OUT / "peer.json"
    write_json(path, result)
    print(table(result))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
