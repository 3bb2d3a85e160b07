"""Peak memory of inference as the data set grows 10x: it should stay flat.

Run: ``.venv/bin/python -m benchmarks.memory [--network NET] [--engine numpy|compiled]``.

Each size runs in a fresh subprocess that memory-maps a float32 ``.npy`` of ``N`` MNIST-shaped
samples (the bundled test split, tiled), runs ``Network.run`` on it and reports its peak resident
set size. Inputs are checked and processed in blocks, so what grows with ``N`` is only the
answers (logits and predictions, 48 bytes a sample) and the memory map's pages in the cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.engine import peak_rss_mb

SIZES = (2_000, 20_000)


def _worker(network: str, data: str, engine: str) -> None:
    import powersave

    net = powersave.load(network)
    x = np.load(data, mmap_mode="r")
    before = peak_rss_mb()
    run = net.run(x, "balanced" if "balanced" in net.modes else "full", engine=engine)
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "n": int(x.shape[0]),
                "peak_rss_mb": peak,
                "before_run_mb": before,
                "synaptic_ops_per_sample": run.stats.synaptic_ops_per_sample,
            }
        )
    )


def _train_network(path: Path) -> None:
    import powersave
    from powersave.data import load_mnist10k
    from powersave.frontend import mlp, train_classifier

    data = load_mnist10k()
    model = train_classifier(mlp(seed=0), data.train.x, data.train.y, epochs=3, progress=False)
    net = powersave.convert(model, data.calibration.x, percentile=99.9)
    powersave.save(net.calibrate(data.calibration.x, data.calibration.y, progress=False), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", help="a saved network (default: train a small MLP)")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return
    from powersave.data import load_mnist10k

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        network = args.network
        if network is None:
            network = str(Path(tmp) / "mlp.safetensors")
            _train_network(Path(network))
        test = np.ascontiguousarray(load_mnist10k().test.x)
        for n in SIZES:
            path = Path(tmp) / f"x{n}.npy"
            np.save(path, np.resize(test, (n, *test.shape[1:])))
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.memory",
                    "--worker",
                    network,
                    str(path),
                    args.engine,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["input_mb"] = path.stat().st_size / 2**20
            rows.append(row)
            print(
                f"N={n:>7,}  input {row['input_mb']:7.1f} MB  peak RSS {row['peak_rss_mb']:7.1f} MB"
                f"  (before the run {row['before_run_mb']:6.1f} MB)"
            )
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    run_growth = (rows[-1]["peak_rss_mb"] - rows[-1]["before_run_mb"]) / (
        rows[0]["peak_rss_mb"] - rows[0]["before_run_mb"]
    )
    print(
        f"data x{SIZES[-1] // SIZES[0]}: peak RSS x{growth:.2f} (memory-mapped input pages "
        f"included); memory added by the run itself x{run_growth:.2f}"
    )
    out_dir = Path("out/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(
        json.dumps({"rows": rows, "growth": growth, "run_growth": run_growth}, indent=1)
    )


if __name__ == "__main__":
    main()
