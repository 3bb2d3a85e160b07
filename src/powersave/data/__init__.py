"""Data: the bundled MNIST-10k sample, and ``.npz`` files of the user's own."""

from powersave.data.bundled import (
    MNIST10K_NAME,
    DataError,
    Dataset,
    Splits,
    load_mnist10k,
    load_npz,
    save_npz,
)

__all__ = [
    "MNIST10K_NAME",
    "DataError",
    "Dataset",
    "Splits",
    "load_mnist10k",
    "load_npz",
    "save_npz",
]
