"""Data sets: the bundled MNIST-10k sample and the user's own ``.npz`` files.

The bundled file holds 10,000 MNIST digits (``x``: uint8 ``(10000, 28, 28)``, ``y``: uint8
``(10000,)``, grouped by class). It is a sample, not MNIST: quote results on it as
"MNIST-10k sample". Nothing here unpickles: ``np.load`` always runs with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from powersave._atomic import atomic_writer
from powersave.errors import PowersaveError

MNIST10K_NAME = "MNIST-10k sample"
MNIST10K_SHA256 = "94e2480bb2d38e772966d2564f7818de27e5e7d95984370b0cfb33e5bb4a39df"
#: Sizes of the bundled sample's splits, in this order, after one seeded shuffle.
# The calibration split sets the modes' cut-offs to accuracy targets as tight as 0.5 pp: with 1000
# samples the standard error of a measured loss is about 0.3 pp, with 2000 it is about 0.2 pp;
# that is worth the 1000 training samples it costs.
MNIST10K_SPLITS = (("train", 6000), ("calibration", 2000), ("test", 2000))
_SPLIT_SEED = 0


class DataError(PowersaveError, ValueError):
    """A data set or data file is unusable (missing arrays, wrong types, NaN, corrupted, ...)."""


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()  # the caller's own array keeps its flags
    view.setflags(write=False)
    return view


@dataclass(frozen=True)
class Dataset:
    """Labelled samples, read only.

    Attributes:
        x: float32 ``(N, *sample_shape)``, e.g. ``(N, 1, 28, 28)``; images in ``[0, 1]``.
        y: int64 ``(N,)``, class labels ``>= 0``.
        name: how reports quote the data, e.g. ``"MNIST-10k sample (test)"``.
    """

    x: np.ndarray
    y: np.ndarray
    name: str

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim >= 2):
            raise DataError(
                f"data set {self.name!r}: x must be a float32 array (N, ...); build data sets "
                "with Dataset.from_arrays, which converts"
            )
        if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.ndim == 1):
            raise DataError(f"data set {self.name!r}: y must be an int64 array (N,)")
        if len(x) != len(y):
            raise DataError(f"data set {self.name!r}: {len(x)} samples in x but {len(y)} labels")
        object.__setattr__(self, "x", _read_only(x))
        object.__setattr__(self, "y", _read_only(y))

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_arrays(cls, x: Any, y: Any, name: str, *, source: str | None = None) -> Dataset:
        """Check and convert user arrays: uint8 images become float32 ``x / 255``, float data
        float32, integer labels int64.

        Args:
            x: ``(N, ...)`` uint8 (0–255) or floating point, finite.
            y: ``(N,)`` integer labels ``>= 0``.
            source: where the arrays come from, for error messages (default: ``name``).
        """
        where = source or f"data set {name!r}"
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype == object or y.dtype == object:
            raise DataError(f"{where}: object arrays are not data; store numbers")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / np.float32(255)
        elif np.issubdtype(x.dtype, np.floating):
            with np.errstate(over="ignore"):  # overflow to inf is reported just below
                x = x.astype(np.float32)
        elif np.issubdtype(x.dtype, np.integer):
            raise DataError(
                f"{where}: x has dtype {x.dtype}; store images as uint8 (0–255) or as floats"
            )
        else:
            raise DataError(f"{where}: x must hold real numbers (uint8 or float), got {x.dtype}")
        if x.ndim < 2:
            raise DataError(f"{where}: x must have shape (N, ...) with N samples, got {x.shape}")
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DataError(f"{where}: x holds {bad} NaN, infinite or beyond-float32 values")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y must hold integer class labels, got dtype {y.dtype}")
        if y.ndim != 1:
            raise DataError(f"{where}: y must have shape (N,), got {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"{where}: holds no samples")
        if y.min() < 0:
            raise DataError(f"{where}: y holds negative labels, e.g. {int(y.min())}")
        return cls(np.ascontiguousarray(x), y.astype(np.int64), name)


@dataclass(frozen=True)
class Splits:
    """Disjoint train, calibration and test sets of one data source."""

    train: Dataset
    calibration: Dataset
    test: Dataset

    def head(self, train: int | None, calibration: int | None, test: int | None) -> Splits:
        """The first ``n`` samples of each split (``None``: all of it), e.g. for a quick run."""
        return Splits(
            _head(self.train, train), _head(self.calibration, calibration), _head(self.test, test)
        )


def _head(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset.y):
        return dataset
    return Dataset(dataset.x[:n], dataset.y[:n], dataset.name)


def _split_indices(n: int, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Consecutive slices of one seeded permutation of ``range(n)``: disjoint index arrays."""
    if sum(sizes) > n:
        raise ValueError(f"splits of {sum(sizes)} samples from {n}")
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    bounds = np.cumsum((0, *sizes))
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


@functools.lru_cache(maxsize=1)
def load_mnist10k() -> Splits:
    """The bundled MNIST-10k sample split 6000 / 2000 / 2000 (train / calibration / test).

    The split is one fixed permutation (``PCG64(0)``), the same on every machine and call. The
    file's sha256 is checked on first load; later calls return the same cached, read-only
    object. Arrays: ``x`` float32
    ``(N, 1, 28, 28)`` in ``[0, 1]`` (pixel / 255), ``y`` int64 ``(N,)``.
    """
    resource = resources.files("powersave.data").joinpath("mnist10k.npz")
    data = resource.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST10K_SHA256:
        raise DataError(
            f"the bundled {MNIST10K_NAME} file is corrupted (sha256 {digest}, expected "
            f"{MNIST10K_SHA256}); reinstall powersave"
        )
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
    x = x.reshape(-1, 1, 28, 28)  # (N, C=1, H, W)
    sizes = tuple(size for _, size in MNIST10K_SPLITS)
    indices = _split_indices(len(y), sizes, _SPLIT_SEED)
    parts = {
        split: Dataset.from_arrays(x[idx], y[idx], f"{MNIST10K_NAME} ({split})")
        for (split, _), idx in zip(MNIST10K_SPLITS, indices, strict=True)
    }
    return Splits(**parts)


def _read_npz(path: Path, where: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Arrays ``x``, ``y`` and the optional ``name`` of an ``.npz`` file, never unpickling."""
    # One handle, opened and closed here: np.load leaks its own when a zip turns out damaged.
    with path.open("rb") as handle:
        magic = handle.read(6)
        if magic == b"\x93NUMPY":
            raise DataError(f"{where} is a single .npy array; save x and y in one .npz (np.savez)")
        if magic[:4] != b"PK\x03\x04":
            raise DataError(f"{where} is not an .npz file (a zip of .npy arrays, from np.savez)")
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{where} lacks array(s) {missing}; it holds {archive.files}. Save with "
                    "np.savez(path, x=images, y=labels)"
                )
            stored = str(archive["name"]) if "name" in archive.files else None
            return archive["x"], archive["y"], stored


def load_npz(path: str | os.PathLike[str], name: str | None = None) -> Dataset:
    """Load a data set from an ``.npz`` file with arrays ``x`` ``(N, ...)`` and ``y`` ``(N,)``.

    ``x`` may be uint8 images (scaled to ``[0, 1]``) or floats (kept, as float32); ``y`` integer
    labels. The name is ``name``, else the file's ``name`` entry (written by :func:`save_npz`),
    else the file name. Raises :class:`DataError` naming the file for anything unusable.
    """
    path = Path(path)
    where = f"data file {path}"
    if not path.exists():
        raise DataError(f"{where} does not exist")
    if path.is_dir():
        raise DataError(f"{where} is a folder, not an .npz file")
    try:
        x, y, stored = _read_npz(path, where)
    except DataError:
        raise
    except PermissionError as exc:
        raise DataError(f"no permission to read {where}") from exc
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{where} holds an object array (pickled Python objects), which powersave never "
                "loads; store numeric arrays"
            ) from exc
        raise DataError(f"{where} is not a readable .npz file: {exc}") from exc
    except Exception as exc:  # zipfile, zlib and OS errors from a damaged archive
        raise DataError(f"{where} is not a readable .npz file: {exc}") from exc
    return Dataset.from_arrays(x, y, name or stored or path.stem, source=where)


def save_npz(path: str | os.PathLike[str], dataset: Dataset) -> None:
    """Write ``dataset`` to ``path`` (used as given, no extension added), atomically."""
    with atomic_writer(path) as handle:
        np.savez_compressed(handle, x=dataset.x, y=dataset.y, name=np.str_(dataset.name))
