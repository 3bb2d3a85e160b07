"""Data sets by name: MNIST, Fashion-MNIST and CIFAR-10, downloaded on first use.

Each is split three ways. ``test`` is the official test set. ``calibration`` is carved from the
official training set: the samples at the first ``calibration`` positions of one fixed
permutation (``PCG64(0)``) of the training indices; ``train`` is the rest. Both keep the
official order. Where each file comes from and which checksums are checked: ``docs/data.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from powersave.data.bundled import (
    MNIST10K_NAME,
    MNIST10K_SPLITS,
    DataError,
    Dataset,
    Splits,
    _split_indices,
    load_mnist10k,
    load_npz,
)
from powersave.data.download import RemoteFile, fetch, resolve_cache_dir
from powersave.data.formats import idx_images, idx_labels, read_cifar10_binary, read_idx_gz

#: ``x_train, y_train, x_test, y_test`` as uint8 arrays, images ``(N, C, H, W)``.
RawArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_SEED = 0
#: The fractions of an ``.npz`` file's samples held out for test and for calibration.
NPZ_TEST_FRACTION = 0.2
NPZ_CALIBRATION_FRACTION = 0.1

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def read_idx_files(paths: Mapping[str, Path]) -> RawArrays:
    """Read the four gzipped IDX files of MNIST or Fashion-MNIST, keyed by their file names."""

    def pair(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
        x = idx_images(read_idx_gz(paths[images]), f"data file {paths[images]}")
        y = idx_labels(read_idx_gz(paths[labels]), f"data file {paths[labels]}", 10)
        if len(x) != len(y):
            raise DataError(
                f"{paths[images]} holds {len(x)} images but {paths[labels]} {len(y)} labels"
            )
        return x, y

    return (*pair(*IDX_FILES[:2]), *pair(*IDX_FILES[2:]))


def read_cifar10_files(paths: Mapping[str, Path]) -> RawArrays:
    """Read ``cifar-10-binary.tar.gz``."""
    return read_cifar10_binary(paths["cifar-10-binary.tar.gz"])


@dataclass(frozen=True)
class DatasetSource:
    """A published data set: its files and how to read them.

    Attributes:
        name: the key ``load_dataset`` knows it by, e.g. ``"mnist"``; also its cache subfolder.
        title: how reports quote it, e.g. ``"MNIST"``.
        files: the published files.
        read: turns ``{file name: path}`` into uint8 ``x_train, y_train, x_test, y_test``.
        n_train: size of the official training set (checked after reading).
        n_test: size of the official test set (checked after reading).
        calibration: default number of training samples held out for calibration.
    """

    name: str
    title: str
    files: tuple[RemoteFile, ...]
    read: Callable[[Mapping[str, Path]], RawArrays]
    n_train: int
    n_test: int
    calibration: int = 5000


def _remote_files(
    table: tuple[tuple[str, int, str, str], ...], mirrors: tuple[str, ...]
) -> tuple[RemoteFile, ...]:
    """``RemoteFile`` s from rows ``(file name, size, md5, sha256)``, each at every mirror."""
    return tuple(
        RemoteFile(name, tuple(mirror + name for mirror in mirrors), size, md5, sha256)
        for name, size, md5, sha256 in table
    )


# MD5s: torchvision's MNIST / FashionMNIST classes (Fashion-MNIST's match its README's table).
# SHA-256s and sizes: TensorFlow Datasets' url_checksums (mnist.txt, fashion_mnist.txt).
MNIST = DatasetSource(
    name="mnist",
    title="MNIST",
    files=_remote_files(
        (
            (
                "train-images-idx3-ubyte.gz",
                9912422,
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                28881,
                "d53e105ee54ea40749a09fcbcd1e9432",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                1648877,
                "9fb629c4189551a2d022fa330f9573f3",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                4542,
                "ec29112dd5afa0611ce80d1b7f02629c",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        ),
        mirrors=(
            "http://yann.lecun.com/exdb/mnist/",  # the original
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's mirror
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
        ),
    ),
    read=read_idx_files,
    n_train=60000,
    n_test=10000,
)

FASHION_MNIST = DatasetSource(
    name="fashion-mnist",
    title="Fashion-MNIST",
    files=_remote_files(
        (
            (
                "train-images-idx3-ubyte.gz",
                26421880,
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                29515,
                "25c81989df183df01b3e8a0aad5dffbe",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                4422102,
                "bef4ecab320f06d8554ea6380940ec79",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                5148,
                "bb300cfdad3c16e7a12a480ee83cd310",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the README's links
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    read=read_idx_files,
    n_train=60000,
    n_test=10000,
)

# MD5: the CIFAR page's table. SHA-256 and size: TensorFlow Datasets' url_checksums/cifar10.txt.
CIFAR10 = DatasetSource(
    name="cifar10",
    title="CIFAR-10",
    files=(
        RemoteFile(
            "cifar-10-binary.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
            size=170052171,
            md5="c32a1d4ab5d03f1284b67883e8d87530",
            sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        ),
    ),
    read=read_cifar10_files,
    n_train=50000,
    n_test=10000,
)

#: The downloadable data sets by name.
DATASETS: dict[str, DatasetSource] = {s.name: s for s in (MNIST, FASHION_MNIST, CIFAR10)}
MNIST10K = "mnist10k"
_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "mnist-10k": MNIST10K,
}


def dataset_names() -> tuple[str, ...]:
    """The names :func:`load_dataset` knows, the bundled sample last."""
    return (*DATASETS, MNIST10K)


def _key(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


def fetch_dataset(
    source: str | DatasetSource,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Make sure every file of a data set is in the cache; return ``{file name: path}``.

    Files go to ``<cache folder>/<name>/``; see :func:`powersave.data.download.resolve_cache_dir`.
    """
    if isinstance(source, str):
        key = _key(source)
        if key not in DATASETS:
            raise DataError(
                f"no downloadable data set named {source!r}; choose one of {list(DATASETS)}"
            )
        source = DATASETS[key]
    folder = resolve_cache_dir(cache_dir) / source.name
    paths: dict[str, Path] = {}
    for index, remote in enumerate(source.files):
        try:
            paths[remote.name] = fetch(remote, folder, download=download, progress=progress)
        except DataError as exc:
            # Name every other file still missing too, without trying to download them.
            others = [r for r in source.files[index + 1 :] if not _present(r, folder)]
            if not others:
                raise
            listed = "".join(f"\n  {folder / r.name}  from {r.urls[0]}" for r in others)
            raise DataError(f"{exc}\nAlso missing for {source.title}:{listed}") from exc
    return paths


def _present(remote: RemoteFile, folder: Path) -> bool:
    try:
        fetch(remote, folder, download=False)
    except DataError:
        return False
    return True


def _carve(x: np.ndarray, y: np.ndarray, calibration: int, title: str) -> tuple[Dataset, Dataset]:
    """Split an official training set into train and calibration sets (see module docstring)."""
    n = len(y)
    if not 0 < calibration < n:
        raise DataError(
            f"{title}: calibration must hold between 1 and {n - 1} of the {n} training "
            f"samples, got {calibration}"
        )
    order = np.random.Generator(np.random.PCG64(_SEED)).permutation(n)
    held, kept = np.sort(order[:calibration]), np.sort(order[calibration:])
    return (
        Dataset.from_arrays(x[kept], y[kept], f"{title} (train)"),
        Dataset.from_arrays(x[held], y[held], f"{title} (calibration)"),
    )


def _load_source(
    source: DatasetSource,
    calibration: int | None,
    cache_dir: str | os.PathLike[str] | None,
    download: bool,
    progress: bool,
) -> Splits:
    paths = fetch_dataset(source, cache_dir=cache_dir, download=download, progress=progress)
    x_train, y_train, x_test, y_test = source.read(paths)
    folder = next(iter(paths.values())).parent
    for part, got, expected in (
        ("training", x_train, source.n_train),
        ("test", x_test, source.n_test),
    ):
        if len(got) != expected:
            raise DataError(
                f"{source.title}: the files in {folder} hold {len(got)} {part} samples, "
                f"expected {expected}"
            )
    size = source.calibration if calibration is None else calibration
    train, held = _carve(x_train, y_train, size, source.title)
    test = Dataset.from_arrays(x_test, y_test, f"{source.title} (test)")
    return Splits(train=train, calibration=held, test=test)


def _load_npz_splits(path: Path, calibration: int | None) -> Splits:
    """One ``.npz`` data set split by one fixed permutation (``PCG64(0)``)."""
    whole = load_npz(path)
    n = len(whole)
    n_test = round(NPZ_TEST_FRACTION * n)
    n_cal = round(NPZ_CALIBRATION_FRACTION * n) if calibration is None else calibration
    if min(n_test, n_cal, n - n_test - n_cal) < 1:
        raise DataError(
            f"data file {path}: {n} samples are too few to split into train, calibration "
            f"({n_cal}) and test ({n_test}); each needs at least one"
        )
    train, held, test = _split_indices(n, (n - n_test - n_cal, n_cal, n_test), _SEED)
    parts = {"train": train, "calibration": held, "test": test}
    return Splits(
        **{
            part: Dataset(whole.x[idx], whole.y[idx], f"{whole.name} ({part})")
            for part, idx in parts.items()
        }
    )


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``x`` ``(N, C, ...)``, each ``(C,)``, float64.

    Accumulated in chunks of samples so that no float64 copy of the whole set is made.
    """
    axes = (0, *range(2, x.ndim))
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), 1024):
        chunk = x[start : start + 1024].astype(np.float64)
        total += chunk.sum(axis=axes)
        squares += np.square(chunk).sum(axis=axes)
    count = x.size // x.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean, std


def normalize_splits(splits: Splits) -> Splits:
    """Standardise every split per channel with the training split's statistics.

    ``x' = (x - mean_c) / std_c`` with ``mean_c``, ``std_c`` the mean and (population) standard
    deviation of channel ``c`` over all training pixels. The results are signed, roughly zero
    mean and unit variance. A constant channel (``std_c = 0``) is only centred.
    """
    mean, std = _channel_stats(splits.train.x)
    std = np.where(std > 0, std, 1.0)  # a constant channel has nothing to scale
    shape = (1, -1) + (1,) * (splits.train.x.ndim - 2)  # broadcast over (N, C, H, W)
    mean32 = mean.astype(np.float32).reshape(shape)
    std32 = std.astype(np.float32).reshape(shape)

    def scaled(part: Dataset) -> Dataset:
        title, _, rest = part.name.rpartition(" (")
        name = f"{title}, normalised ({rest}" if title else f"{part.name}, normalised"
        return Dataset((part.x - mean32) / std32, part.y, name)

    return Splits(scaled(splits.train), scaled(splits.calibration), scaled(splits.test))


def load_dataset(
    name: str | os.PathLike[str] | DatasetSource,
    *,
    calibration: int | None = None,
    normalize: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Splits:
    """Train, calibration and test sets of a data set, downloaded on first use.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (downloaded into the cache);
            ``"mnist10k"`` (the bundled sample, with its fixed split); the path of an
            ``.npz`` file (see :func:`powersave.data.load_npz`), split 70 / 10 / 20 % by one
            fixed permutation; or a :class:`DatasetSource` (e.g. with other mirrors).
        calibration: how many official training samples to hold out for calibration (default
            5000), or for an ``.npz`` file how many of its samples (default 10 %).
        normalize: standardise each channel with the training split's mean and standard
            deviation (see :func:`normalize_splits`); ``x`` is then signed, not in ``[0, 1]``.
            Meant for CIFAR-10, whose networks expect centred inputs.
        cache_dir: the cache folder (default: ``$POWERSAVE_DATA``, else ``~/.cache/powersave``).
        download: if False, never go online; missing files are an error saying where to put them.
        progress: show a progress bar while downloading.

    Returns:
        :class:`Splits` of :class:`Dataset`: ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]``
        (``pixel / 255``) unless normalised, ``y`` int64 ``(N,)``.

    Raises:
        DataError: unknown name, a file that cannot be downloaded or read (naming the file, its
            URL and where to place it), or an impossible ``calibration``.
    """
    if isinstance(name, DatasetSource):
        splits = _load_source(name, calibration, cache_dir, download, progress)
    elif isinstance(name, str) and _key(name) in DATASETS:
        splits = _load_source(DATASETS[_key(name)], calibration, cache_dir, download, progress)
    elif isinstance(name, str) and _key(name) == MNIST10K:
        if calibration is not None:
            sizes = " / ".join(str(size) for _, size in MNIST10K_SPLITS)
            raise DataError(
                f"the bundled {MNIST10K_NAME} has a fixed split ({sizes}); leave calibration unset"
            )
        splits = load_mnist10k()
    elif not isinstance(name, str) or name.endswith(".npz") or Path(name).exists():
        splits = _load_npz_splits(Path(name), calibration)
    else:
        raise DataError(
            f"unknown data set {name!r}: give one of {list(dataset_names())} or the path of "
            "an .npz file"
        )
    return normalize_splits(splits) if normalize else splits
