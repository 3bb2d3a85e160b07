"""Checks on what users pass in: numpy arrays or torch tensors, without importing torch."""

from __future__ import annotations

from typing import Any

import numpy as np

from powersave.errors import InputError


def as_array(x: Any, what: str = "inputs") -> np.ndarray:
    """A numpy view of ``x``: numpy arrays, torch tensors (moved to the CPU) or nested lists."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # torch is the caller's, never imported here
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}"
        ) from exc
    if array.dtype == object:
        raise TypeError(
            f"{what} must be a numeric array, got an object array (ragged lists or mixed types?)"
        )
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"{what} must hold real numbers (integer or float), got dtype {array.dtype}"
        )
    return array


def check_batch(
    x: Any, shape: tuple[int, ...], *, signed: bool, what: str = "inputs"
) -> np.ndarray:
    """Validate a batch for a network whose samples have ``shape``; return it as float32.

    Raises:
        TypeError: not numeric (strings, booleans, complex, objects).
        InputError: (a ValueError) empty batch, wrong shape or feature count, NaN or infinite
            values, negative values for a network compiled for non-negative inputs.
    """
    array = as_array(x, what)
    expected = "(N, " + ", ".join(str(s) for s in shape) + ")"
    if array.ndim == len(shape) and tuple(array.shape) == shape:
        raise InputError(
            f"{what} need a batch axis: expected shape {expected}, got {tuple(array.shape)} "
            f"(one sample? pass x[None])"
        )
    if array.ndim != len(shape) + 1:
        raise InputError(
            f"{what} must have shape {expected}, got {tuple(array.shape)} "
            f"({array.ndim} dimensions instead of {len(shape) + 1})"
        )
    if array.shape[0] == 0:
        raise InputError(f"{what} are an empty batch: expected shape {expected} with N >= 1")
    if tuple(array.shape[1:]) != shape:
        got = int(np.prod(array.shape[1:]))
        features = int(np.prod(shape))
        detail = (
            f"{got} features per sample instead of {features}"
            if got != features
            else "same number of features, different layout: reshape them"
        )
        raise InputError(f"{what} must have shape {expected}, got {tuple(array.shape)} ({detail})")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise InputError(
            f"{what} contain NaN or infinite values ({int((~finite).sum())} of them, "
            f"the first at index {tuple(int(i) for i in bad)})"
        )
    if not signed and (array < 0).any():
        raise InputError(
            f"{what} contain negative values (min {float(array.min()):.4g}) but the network was "
            "compiled for non-negative inputs; convert it with signed calibration inputs (or "
            "signed=True) to get the ON/OFF split"
        )
    return array
