"""Top-level functions: convert a PyTorch model, save and load networks."""

from __future__ import annotations

import os
from typing import Any

from powersave.network import Network

#: The percentile of positive activations the demo, the experiment and ``powersave train`` set
#: the scales at (Rueckauer et al. 2017): a few outliers no longer stretch the window, so
#: cut-offs bite finely; the clipping it costs is measured and reported.
SCALE_PERCENTILE = 99.9


def convert(
    model: Any,
    calibration_inputs: Any,
    *,
    percentile: float | None = None,
    signed: bool | None = None,
) -> Network:
    """Compile a trained ReLU network (``torch.nn.Module``) into a time-to-first-spike network.

    Args:
        model: ``nn.Sequential`` or a torch.fx-traceable module of Linear, Conv2d, ReLU,
            BatchNorm (folded), AvgPool2d, MaxPool2d, Flatten, Dropout and Identity.
        calibration_inputs: ``(N, *input_shape)`` array or tensor; sets each layer's scale ``A_ℓ``.
        percentile: ``None`` sets each scale to the maximum activation on the calibration inputs
            (full power is then exact on them); ``p`` in ``(0, 100]`` uses the p-th percentile of
            the positive activations instead (robust to outliers, at a measured clipping cost).
        signed: ON/OFF split of the input; ``None`` decides from the calibration inputs' sign.

    Needs PyTorch (the ``torch`` extra); running the result does not.
    """
    from powersave.frontend import convert_to_graph  # torch lives in frontend/ only

    graph = convert_to_graph(model, calibration_inputs, percentile=percentile, signed=signed)
    metadata = {
        "source": type(model).__name__,
        "calibration_samples": len(calibration_inputs),
        "scale_rule": "max" if percentile is None else f"percentile {percentile}",
    }
    return Network(graph, {}, metadata)


def save(network: Network, path: str | os.PathLike[str]) -> None:
    """Write ``network`` (graph, calibrated modes, metadata) as one safetensors file, atomically."""
    from powersave.graph.io import write_network

    write_network(path, network.graph, network.plans, network.metadata)


def load(path: str | os.PathLike[str]) -> Network:
    """Read a network written by :func:`save`; never unpickles anything.

    Raises:
        NetworkFileError: the file is missing, unreadable, truncated, corrupted, of another
            format version, or not a powersave network.
    """
    from powersave.graph.io import read_network

    graph, plans, metadata = read_network(path)
    return Network(graph, plans, metadata)
