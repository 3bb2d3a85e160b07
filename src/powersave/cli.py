"""``powersave``: thin subcommands over the public API.

User errors (bad files, bad inputs, unknown modes) end with exit status 2 and one readable line;
``--debug`` shows the traceback instead. Every output file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from powersave._atomic import write_text_atomic
from powersave._version import __version__
from powersave.errors import PowersaveError
from powersave.network import InputRangeWarning

USER_ERRORS = (PowersaveError, ValueError, TypeError, OSError, KeyError)


def _load_data(args: argparse.Namespace, shape: tuple[int, ...], split: str) -> tuple[Any, Any]:
    """Inputs and labels shaped for a network's input.

    ``args.data`` is an ``.npz`` file with ``x`` and ``y`` (all of it is used), or a data set name
    (``mnist10k``, ``mnist``, ``fashion-mnist``, ``cifar10``) of which ``split`` is used.
    """
    from powersave.data import dataset_names, load_dataset, load_npz

    spec = args.data
    if Path(spec).exists() or spec.endswith(".npz") or spec not in dataset_names():
        if not Path(spec).exists() and spec not in dataset_names():
            raise ValueError(
                f"{spec}: no such file, and not a data set name ({', '.join(dataset_names())})"
            )
        data = load_npz(spec)
    else:
        splits = load_dataset(
            spec,
            cache_dir=getattr(args, "cache_dir", None),
            download=not getattr(args, "no_download", False),
            normalize=getattr(args, "normalize", False),
        )
        data = getattr(splits, split)
    x = data.x
    # A missing channel axis of size 1 is the one reshape that cannot mix up a layout.
    if tuple(x.shape[1:]) != shape and shape[:1] == (1,) and tuple(x.shape[1:]) == shape[1:]:
        x = x.reshape(len(x), *shape)
    return x, data.y


def _data_arguments(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument(
        "data",
        help=f".npz with x and y, or a data set name (uses its {split} split): "
        "mnist10k, mnist, fashion-mnist, cifar10",
    )
    p.add_argument("--cache-dir", help="where downloaded data sets live ($POWERSAVE_DATA)")
    p.add_argument("--no-download", action="store_true", help="fail rather than download")
    p.add_argument("--normalize", action="store_true", help="per-channel standardisation")


def _write_json(path: str, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from powersave.demo import run_demo

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if not models:
        raise ValueError("--models names no model; choose from mlp, cnn")
    results = run_demo(
        args.out,
        models=models,
        seed=args.seed,
        progress=not args.quiet,
        threads=args.threads,
        quick=args.quick,
    )
    out = Path(args.out)
    for model in results["models"]:
        print(f"\n{model['architecture']}  (PyTorch test accuracy {model['torch_accuracy']:.2%})")
        print(f"  {'mode':<10} {'accuracy':>9} {'synops/dense':>13} {'vs zero-skip':>13}")
        for m in model["modes"]:
            print(
                f"  {m['name']:<10} {m['accuracy']:>9.2%} "
                f"{m['synaptic_ops_per_sample'] / m['dense_macs_per_sample']:>13.1%} "
                f"{m['synaptic_ops_per_sample'] / m['zero_skip_ops_per_sample']:>13.1%}"
            )
    print(f"\nwrote {out / 'results.json'} and {out / 'report.html'} ({results['seconds']:.0f} s)")


def cmd_info(args: argparse.Namespace) -> None:
    from powersave.api import load

    net = load(args.network)
    g = net.graph
    print(f"{args.network}: powersave network, {len(g.nodes)} nodes, {g.n_classes} classes")
    print(f"  input {g.input.shape}{' signed (ON/OFF)' if g.input.signed else ''}")
    for row in g.summary():
        scale = f"A={row['scale']:.4g}" if row["scale"] is not None else ""
        print(
            f"  {row['name']:<16} {row['kind']:<8} {row['role']:<8} "
            f"{'x'.join(map(str, row['output_shape'])):<10} {row['parameters']:>9} params  {scale}"
        )
    calibrated = dict(net.metadata.get("modes", {}))
    print(f"  modes: {', '.join(net.modes)}")
    for name in net.modes:
        plan = net.plan(name)
        line = f"    {name:<10} cut-offs {[round(v, 3) for v in plan.cutoffs] or 'none'}"
        line += ", early decision" if plan.early_decision else ""
        c = calibrated.get(name, {})
        if isinstance(c, dict) and "calibration_accuracy" in c:
            line += (
                f"  calibration accuracy {c['calibration_accuracy']:.2%} "
                f"(loss {c.get('calibration_accuracy_loss_pp', float('nan')):.2f} pp), "
                f"{c.get('calibration_synaptic_ops_per_sample', float('nan')):.0f} synaptic ops"
                "/sample"
            )
        print(line)


def cmd_run(args: argparse.Namespace) -> None:
    from powersave.api import load

    net = load(args.network)
    x, y = _load_data(args, net.graph.input.shape, "test")
    run = net.run(x, args.mode)
    s = run.stats
    print(f"mode {run.mode}: accuracy {run.accuracy(y):.2%} on {s.n_samples} samples")
    print(
        f"  synaptic ops/sample {s.synaptic_ops_per_sample:.0f} "
        f"({s.synaptic_ops / s.dense_macs:.1%} of dense MACs, "
        f"{s.synaptic_ops / max(s.zero_skip_ops, 1):.1%} of zero-skipping ops); "
        f"spikes/neuron {s.spikes_per_neuron:.3f} (hidden {s.spikes_per_hidden_neuron:.3f}); "
        f"{run.seconds / s.n_samples * 1e3:.3f} ms/sample"
    )
    if args.out:
        _write_json(
            args.out,
            {
                "mode": run.mode,
                "accuracy": run.accuracy(y),
                "stats": s.to_dict(),
                "predictions": run.predictions.tolist(),
            },
        )


def cmd_calibrate(args: argparse.Namespace) -> None:
    from powersave.api import load, save
    from powersave.power.calibrate import DEFAULT_TARGETS, Target, calibrate

    net = load(args.network)
    x, y = _load_data(args, net.graph.input.shape, "calibration")
    targets = dict(DEFAULT_TARGETS)
    for spec in args.target or []:
        name, _, value = spec.partition("=")
        if not name or not value:
            raise ValueError(f"--target takes NAME=LOSS_PP, e.g. balanced=0.5; got {spec!r}")
        targets[name] = Target(accuracy_loss_pp=float(value))
    if args.ops_budget is not None:
        targets["budget"] = Target(synaptic_ops=args.ops_budget)
    if args.energy_budget is not None:
        targets["energy-budget"] = Target(energy_pj=args.energy_budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an unreached budget is printed below
        result = calibrate(
            net,
            x,
            y,
            targets,
            profile=args.profile,
            progress=not args.quiet,
            min_step=args.min_step,
        )
    save(result.network, args.out or args.network)
    for name, info in result.modes.items():
        missed = "" if info["reached"] else "  (budget NOT reached)"
        print(
            f"{name:<10} cut-offs {[round(v, 3) for v in info['cutoffs']]}  "
            f"loss {info['calibration_accuracy_loss_pp']:.2f} pp  "
            f"{info['calibration_synaptic_ops_per_sample']:.0f} synaptic ops/sample{missed}"
        )
    print(f"wrote {args.out or args.network}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from powersave.api import load
    from powersave.power.evaluate import evaluate, sweep

    net = load(args.network)
    x, y = _load_data(args, net.graph.input.shape, "test")
    result = evaluate(net, x, y)
    result["sweep"] = sweep(net, x, y)
    for m in result["modes"]:
        print(
            f"{m['name']:<10} accuracy {m['accuracy']:.2%}  "
            f"synaptic ops/sample {m['synaptic_ops_per_sample']:.0f}"
        )
    if args.out:
        _write_json(args.out, result)


def cmd_report(args: argparse.Namespace) -> None:
    from powersave.report import write_report

    path = Path(args.results)
    if not path.is_file():
        raise ValueError(f"results file {path} does not exist (powersave demo writes one)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{args.results} is not a JSON results file: {exc}") from None
    if not isinstance(results, dict) or "models" not in results:
        raise ValueError(f"{args.results} is not a powersave results.json (no 'models')")
    out = args.out or str(Path(args.results).parent)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = write_report(results, out)
    print(f"wrote {paths.get('report.html', out)}")


def cmd_export(args: argparse.Namespace) -> None:
    from powersave.api import load
    from powersave.export import export_nir

    export_nir(load(args.network), args.nir)
    print(f"wrote {args.nir} (NIR; opens with nir.read; see docs/nir.md for what consumers run)")


def cmd_train(args: argparse.Namespace) -> None:
    from powersave.api import save
    from powersave.data import load_dataset
    from powersave.frontend.pipeline import train_network

    trained = train_network(
        load_dataset(args.data),
        model=args.model,
        variant=args.variant,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
        checkpoint=args.checkpoint,
    )
    save(trained.network, args.out)
    info = trained.info
    layers = info.get("weight_sparsity", [])
    weights = sum(row["weights"] for row in layers)
    zeros = sum(row["weights"] * row["zero_share"] for row in layers)
    print(
        f"{args.model} ({args.variant}): PyTorch test accuracy {info['dense_accuracy']:.2%}, "
        f"{zeros / max(weights, 1):.1%} of weights zero; modes "
        f"{', '.join(trained.network.modes)} calibrated on the calibration split"
    )
    print(f"wrote {args.out}")


def cmd_criticality(args: argparse.Namespace) -> None:
    from powersave.api import load
    from powersave.criticality import diagnose

    net = load(args.network)
    x, _ = _load_data(args, net.graph.input.shape, "test")
    result = diagnose(
        net,
        x,
        mode=args.mode,
        avalanche_samples=args.samples,
        per_sample=args.per_sample,
        perturbation="move" if args.move else "delete",
        seed=args.seed,
    )
    if args.out:
        _write_json(args.out, result)
    else:
        print(json.dumps(result, indent=1))


def cmd_experiment(args: argparse.Namespace) -> None:
    from powersave.experiment import format_summary, run_criticality_experiment

    seeds = tuple(int(v) for v in args.seeds.split(",") if v.strip())
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if not seeds or not models:
        raise ValueError("--seeds and --models must each name at least one")
    results = run_criticality_experiment(
        args.out,
        seeds=seeds,
        models=models,
        quick=args.quick,
        progress=not args.quiet,
        threads=args.threads,
        report=not args.no_report,
    )
    print(format_summary(results))
    print(f"wrote {Path(args.out) / 'results.json'}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powersave", description="A power-saving mode for neural networks."
    )
    parser.add_argument("--version", action="version", version=f"powersave {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo", parents=[common], help="train, convert, calibrate and report on the bundled sample"
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=_positive, default=1, help="torch and BLAS threads (default 1)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--quick", action="store_true", help="a small, fast run (figures mean little)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", parents=[common], help="summary of a saved network")
    p.add_argument("network")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "run", parents=[common], help="run a saved network on an .npz (x, y) in one mode"
    )
    p.add_argument("network")
    _data_arguments(p, "test")
    p.add_argument("--mode", default="full")
    p.add_argument("--out", help="write the stats and predictions as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "calibrate", parents=[common], help="calibrate power-saving modes on held-out .npz data"
    )
    p.add_argument("network")
    _data_arguments(p, "calibration")
    p.add_argument("--out", help="network file to write (default: overwrite NETWORK)")
    p.add_argument("--target", action="append", help="NAME=LOSS_PP, e.g. balanced=0.5")
    p.add_argument("--ops-budget", type=float, help="also a mode 'budget' with this many ops")
    p.add_argument(
        "--energy-budget", type=float, help="also a mode 'energy-budget': pJ per sample (estimate)"
    )
    p.add_argument("--profile", default="cmos45-fp32", help="energy profile to minimise")
    p.add_argument(
        "--min-step",
        type=float,
        default=0.025,
        help="smallest cut-off step of the search (default 0.025; the demo uses 0.05)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "sweep", parents=[common], help="evaluate every mode and a uniform cut-off sweep"
    )
    p.add_argument("network")
    _data_arguments(p, "test")
    p.add_argument("--out", help="write the results as JSON")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "train", parents=[common], help="train a network for the power-saving mode, convert it"
    )
    p.add_argument("--data", default="mnist10k", help="data set name or .npz (default mnist10k)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument(
        "--variant",
        choices=("plain", "sparse", "critical"),
        default="plain",
        help="plain; sparse = activity penalty + pruning + power-aware; critical = sparse + chi",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, default=1)
    p.add_argument("--checkpoint", help="also save the PyTorch weights (safetensors)")
    p.add_argument("--out", required=True, help="network file to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "criticality", parents=[common], help="chi, branching ratio, avalanches of a network"
    )
    p.add_argument("network")
    _data_arguments(p, "test")
    p.add_argument("--mode", default="full")
    p.add_argument("--samples", type=_positive, default=50, help="inputs perturbed")
    p.add_argument("--per-sample", type=_positive, default=32, help="perturbations per input")
    p.add_argument("--move", action="store_true", help="move spikes instead of deleting them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the diagnostics as JSON")
    p.set_defaults(func=cmd_criticality)

    p = sub.add_parser("experiment", parents=[common], help="experiments (criticality)")
    p.add_argument("name", choices=("criticality",))
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--quick", action="store_true", help="a small, fast run (figures mean little)")
    p.add_argument("--threads", type=_positive, default=1)
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("export", parents=[common], help="write a saved network as a NIR graph")
    p.add_argument("network")
    p.add_argument("--nir", required=True, help="output .nir file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", parents=[common], help="plots and report.html from a results.json")
    p.add_argument("results")
    p.add_argument("--out", help="output folder (default: beside results.json)")
    p.set_defaults(func=cmd_report)
    return parser


def _one_line_warnings() -> None:
    """Show a command's input-range warnings as one line each, ``powersave: warning: …``, the
    CLI's own format (other warnings keep Python's). Call inside ``warnings.catch_warnings()``."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, InputRangeWarning):
            print(f"powersave: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    warnings.simplefilter("once", InputRangeWarning)  # a sweep runs many times: each text once
    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            _one_line_warnings()
            args.func(args)
    except KeyboardInterrupt:
        print("powersave: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"powersave: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
