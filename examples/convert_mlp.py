"""Train the 784-256-256-10 MLP on the bundled sample, convert it exactly, and count.

Run: ``.venv/bin/python examples/convert_mlp.py`` (about a minute on two cores).

Scales are the calibration split's maxima (the default), so full power is exact on the
calibration inputs; the figures are measured on the disjoint test split.
"""

from __future__ import annotations

import numpy as np

import powersave
from powersave.data import load_mnist10k
from powersave.frontend import mlp, train_classifier
from powersave.frontend.train import predict


def main() -> None:
    data = load_mnist10k()
    model = train_classifier(mlp(seed=0), data.train.x, data.train.y, epochs=15, seed=0)
    torch_predictions = predict(model, data.test.x)

    net = powersave.convert(model, data.calibration.x)
    run = net.run(data.test.x)
    s = run.stats
    print(f"PyTorch test accuracy       {np.mean(torch_predictions == data.test.y):.2%}")
    print(f"full power test accuracy    {run.accuracy(data.test.y):.2%}")
    print(f"predictions equal PyTorch's {np.mean(run.predictions == torch_predictions):.2%}")
    print(f"neurons clipped by A (test) {s.saturated} per population, total over the split")
    hidden = s.spikes_per_hidden_neuron
    print(f"spikes per neuron           {s.spikes_per_neuron:.3f} (hidden: {hidden:.3f})")
    print(f"dense MACs per sample       {s.dense_macs_per_sample:,.0f}")
    print(
        f"synaptic ops per sample     {s.synaptic_ops_per_sample:,.0f} "
        f"({s.synaptic_ops / s.dense_macs:.1%} of dense MACs)"
    )
    print(
        f"zero-skipping ops           {s.zero_skip_ops_per_sample:,.0f} "
        f"({s.zero_skip_ops / s.dense_macs:.1%} of dense MACs)"
    )


if __name__ == "__main__":
    main()
