"""The temporal code: intensities to spike times and back (DESIGN.md §1, τ = 1).

A neuron of population ℓ with activation ``a`` and scale ``A`` fires at

    t = ℓ + 1 - min(a, A) / A        if a > 0,     never (t = +inf) if a <= 0,

so that a stronger activation fires earlier, inside the window ``[ℓ, ℓ + 1)``. Decoding inverts
it: ``a = A * (ℓ + 1 - t)`` for a spike, ``0`` for silence. Values above ``A`` saturate (fire at
the window's start) and decode to ``A``: that is the clipping error, counted by the engines.
"""

from __future__ import annotations

import numpy as np

#: Spike time of a neuron that never fires.
NEVER = np.inf


def encode(activation: np.ndarray, scale: float, window: int) -> np.ndarray:
    """Spike times of a population with activations ``activation`` (any shape), float64 → same.

    Returns an array of the same shape: times in ``[window, window + 1)``, ``inf`` where silent.
    """
    a = np.asarray(activation)
    with np.errstate(invalid="ignore"):
        t = (window + 1.0) - np.minimum(a, scale) / scale
    # An activation so small that the time rounds to the window's end carries nothing: silent.
    fires = (a > 0) & (t < window + 1.0)
    return np.where(fires, t, NEVER).astype(a.dtype if a.dtype.kind == "f" else np.float64)


def decode(times: np.ndarray, scale: float, window: int) -> np.ndarray:
    """Intensities carried by spike times of population ``window`` (``0`` for silent neurons)."""
    t = np.asarray(times)
    finite = np.isfinite(t)
    return np.where(finite, scale * ((window + 1.0) - np.where(finite, t, 0.0)), 0.0).astype(
        t.dtype
    )


def split_on_off(x: np.ndarray, signed: bool) -> np.ndarray:
    """ON/OFF split of a batch ``(N, C, ...)`` or ``(N, F)``: ``[relu(x), relu(-x)]`` on axis 1.

    Unsigned inputs are returned as they are.
    """
    if not signed:
        return x
    return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)


def quantize_times(times: np.ndarray, bits: int, window: int) -> np.ndarray:
    """Round spike times down onto a grid of ``2**bits`` steps per window (b-bit intensities).

    Rounding down (earlier) keeps every spike inside its window and never silences one.
    """
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    steps = float(2**bits)
    t = np.asarray(times)
    finite = np.isfinite(t)
    grid = window + np.floor((np.where(finite, t, window) - window) * steps) / steps
    return np.where(finite, grid, NEVER).astype(t.dtype)
