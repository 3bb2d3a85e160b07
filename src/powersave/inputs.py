"""Checks on what users pass in: numpy arrays or torch tensors, without importing torch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from powersave.errors import InputError

#: Rows checked at a time.
_BLOCK = 4096
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_array(x: Any, what: str = "inputs") -> np.ndarray:
    """A numpy view of ``x``: numpy arrays, torch tensors (moved to the CPU) or nested lists."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        tensor = x.detach().cpu()  # torch is the caller's, never imported here
        if getattr(tensor.dtype, "is_floating_point", False) and tensor.element_size() < 4:
            tensor = tensor.float()  # bfloat16 and float16 have no lossless numpy twin (bf16)
        x = tensor.numpy()
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
    # Checked block by block, so that a large (or memory-mapped) batch needs no full-size
    # temporaries: memory stays flat as the data grow.
    nonfinite, first, low, high = 0, None, np.inf, -np.inf
    for start in range(0, array.shape[0], _BLOCK):
        block = array[start : start + _BLOCK]
        block_low, block_high = float(block.min()), float(block.max())  # NaN if any is
        if not (math.isfinite(block_low) and math.isfinite(block_high)):
            bad = ~np.isfinite(block)
            nonfinite += int(bad.sum())
            if first is None:
                where = np.argwhere(bad)[0]
                first = (start + int(where[0]), *where[1:])
            continue
        low = min(low, block_low)
        high = max(high, block_high)
    if nonfinite:
        raise InputError(
            f"{what} contain NaN or infinite values ({nonfinite} of them, the first at index "
            f"{tuple(int(i) for i in first)})"  # type: ignore[union-attr]
        )
    if max(abs(low), abs(high)) > _FLOAT32_MAX:
        raise InputError(
            f"{what} hold values beyond float32's range (min {low:.4g}, max {high:.4g}); "
            "the engines compute in float32: rescale the data"
        )
    if not signed and low < 0:
        raise InputError(
            f"{what} contain negative values (min {low:.4g}) but the network was "
            "compiled for non-negative inputs; convert it with signed calibration inputs (or "
            "signed=True) to get the ON/OFF split"
        )
    return array.astype(np.float32, copy=False)
