"""Data: MNIST, Fashion-MNIST and CIFAR-10 by name, the bundled MNIST-10k sample, and ``.npz``
files of the user's own."""

from powersave.data.bundled import (
    MNIST10K_NAME,
    DataError,
    Dataset,
    Splits,
    load_mnist10k,
    load_npz,
    save_npz,
)
from powersave.data.download import RemoteFile, resolve_cache_dir
from powersave.data.registry import (
    DatasetSource,
    dataset_names,
    fetch_dataset,
    load_dataset,
    normalize_splits,
)

__all__ = [
    "MNIST10K_NAME",
    "DataError",
    "Dataset",
    "DatasetSource",
    "RemoteFile",
    "Splits",
    "dataset_names",
    "fetch_dataset",
    "load_dataset",
    "load_mnist10k",
    "load_npz",
    "normalize_splits",
    "resolve_cache_dir",
    "save_npz",
]
