"""Bundled MNIST-10k sample and user .npz files."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from powersave.data import DataError, Dataset, Splits, bundled, load_mnist10k, load_npz, save_npz

# -- bundled sample --------------------------------------------------------------------------


def test_bundled_file_checksum() -> None:
    data = resources.files("powersave.data").joinpath("mnist10k.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == bundled.MNIST10K_SHA256


def test_split_sizes_shapes_and_ranges() -> None:
    splits = load_mnist10k()
    assert isinstance(splits, Splits)
    for part, size in zip(
        (splits.train, splits.calibration, splits.test), (6000, 2000, 2000), strict=True
    ):
        assert len(part) == size
        assert part.x.shape == (size, 1, 28, 28) and part.x.dtype == np.float32
        assert part.y.shape == (size,) and part.y.dtype == np.int64
        assert part.x.min() == 0.0 and part.x.max() == 1.0
        assert set(np.unique(part.y)) == set(range(10))  # every class in every split
        counts = np.bincount(part.y, minlength=10) / size
        assert counts.min() > 0.06 and counts.max() < 0.15  # roughly balanced
        assert part.name.startswith("MNIST-10k sample (") and "MNIST " not in part.name
    assert splits.test.name == "MNIST-10k sample (test)"


def test_pixels_are_grey_levels_over_255() -> None:
    x = load_mnist10k().test.x
    assert np.array_equal(np.round(x * 255), x * np.float32(255))
    assert 0.10 < np.mean(x) < 0.16  # mean intensity 33.4 / 255


def test_splits_are_deterministic() -> None:
    first = load_mnist10k()
    bundled.load_mnist10k.cache_clear()
    second = load_mnist10k()
    assert first is not second
    for a, b in zip(
        (first.train, first.calibration, first.test),
        (second.train, second.calibration, second.test),
        strict=True,
    ):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    # Pinned: a change of the split would silently change every quoted number.
    assert first.test.y[:10].tolist() == [3, 8, 8, 0, 9, 0, 9, 0, 4, 5]


def test_split_indices_are_disjoint_and_shuffled() -> None:
    train, calibration, test = bundled._split_indices(10000, (6000, 2000, 2000), seed=0)
    together = np.concatenate([train, calibration, test])
    assert len(np.unique(together)) == 10000  # pairwise disjoint, all samples used
    assert not np.array_equal(train, np.sort(train))  # shuffled: the file is sorted by class
    again = bundled._split_indices(10000, (6000, 2000, 2000), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, calibration, test), again, strict=True))
    with pytest.raises(ValueError):
        bundled._split_indices(10, (7, 5), seed=0)


def test_splits_are_the_indexed_file_samples() -> None:
    data = resources.files("powersave.data").joinpath("mnist10k.npz").read_bytes()
    raw = np.load(io.BytesIO(data), allow_pickle=False)
    indices = bundled._split_indices(10000, (6000, 2000, 2000), seed=0)
    splits = load_mnist10k()
    for part, idx in zip((splits.train, splits.calibration, splits.test), indices, strict=True):
        assert np.array_equal(part.y, raw["y"][idx])
        assert np.array_equal(part.x[:, 0], raw["x"][idx] / np.float32(255))


def test_arrays_are_read_only() -> None:
    test = load_mnist10k().test
    with pytest.raises(ValueError):
        test.x[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        test.y[0] = 1


def test_corrupted_bundled_file_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(bundled, "MNIST10K_SHA256", "0" * 64)
    bundled.load_mnist10k.cache_clear()
    try:
        with pytest.raises(DataError, match=r"corrupted.*expected 0000.*reinstall"):
            load_mnist10k()
    finally:
        bundled.load_mnist10k.cache_clear()


# -- Dataset ---------------------------------------------------------------------------------


def test_dataset_checks_its_invariants() -> None:
    with pytest.raises(DataError, match="float32"):
        Dataset(np.zeros((2, 3)), np.zeros(2, np.int64), "d")
    with pytest.raises(DataError, match="int64"):
        Dataset(np.zeros((2, 3), np.float32), np.zeros(2, np.int32), "d")
    with pytest.raises(DataError, match="2 samples in x but 3 labels"):
        Dataset(np.zeros((2, 3), np.float32), np.zeros(3, np.int64), "d")


def test_dataset_does_not_freeze_the_callers_arrays() -> None:
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    Dataset(x, y, "d")
    x[0, 0] = 1.0  # still writable


# -- npz files -------------------------------------------------------------------------------


def test_load_npz_uint8_images(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    x = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(5, dtype=np.uint8))
    data = load_npz(path)
    assert data.x.dtype == np.float32 and data.x.shape == (5, 28, 28)
    assert np.array_equal(data.x, x.astype(np.float32) / np.float32(255))
    assert data.y.dtype == np.int64 and data.y.tolist() == [0, 1, 2, 3, 4]
    assert data.name == "digits"
    assert load_npz(str(path), name="mine").name == "mine"


def test_load_npz_keeps_float_data(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    x = np.random.default_rng(1).normal(size=(4, 6))
    np.savez(path, x=x, y=np.array([0, 1, 1, 0]))
    data = load_npz(path)
    assert data.x.dtype == np.float32 and np.array_equal(data.x, x.astype(np.float32))


def test_save_npz_round_trip(tmp_path: Path) -> None:
    test = load_mnist10k().test
    path = tmp_path / "test.data"  # used as given: np.savez would append .npz
    save_npz(path, test)
    assert [p.name for p in tmp_path.iterdir()] == ["test.data"]
    again = load_npz(path)
    assert again.name == test.name
    assert np.array_equal(again.x, test.x) and np.array_equal(again.y, test.y)
    assert again.x.dtype == np.float32 and again.y.dtype == np.int64


def test_save_npz_is_atomic(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "d.npz"
    data = Dataset(np.zeros((2, 3), np.float32), np.zeros(2, np.int64), "d")
    save_npz(path, data)
    before = path.read_bytes()

    def broken(*args, **kwargs) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_npz(path, data)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]


def npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


X, Y = np.zeros((3, 4), np.float32), np.array([0, 1, 2])


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": X}, r"lacks array\(s\) \['y'\]; it holds \['x'\]"),
        ({"images": X, "labels": Y}, r"lacks array\(s\) \['x', 'y'\]"),
        ({"x": X, "y": Y[:2]}, "x has 3 samples but y has 2 labels"),
        ({"x": X.astype(str), "y": Y}, "x must hold real numbers"),
        ({"x": X.astype(bool), "y": Y}, "x must hold real numbers"),
        ({"x": X.astype(np.int64), "y": Y}, "store images as uint8"),
        ({"x": X, "y": Y.astype(np.float32)}, "y must hold integer class labels"),
        ({"x": X, "y": Y.reshape(3, 1)}, r"y must have shape \(N,\)"),
        ({"x": X, "y": -Y}, "negative labels"),
        ({"x": np.where(np.eye(3, 4) > 0, np.nan, X), "y": Y}, "3 NaN, infinite"),
        ({"x": np.full((3, 4), 1e300), "y": Y}, "12 NaN, infinite or beyond-float32"),
        ({"x": np.zeros(3, np.float32), "y": Y}, r"x must have shape \(N, ...\)"),
        ({"x": X[:0], "y": Y[:0]}, "holds no samples"),
    ],
)
def test_load_npz_bad_arrays(tmp_path: Path, arrays: dict, match: str) -> None:
    path = npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_load_npz_object_array(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    x = np.empty(3, dtype=object)
    x[:] = [_Payload(marker), 1, 2]
    path = tmp_path / "obj.npz"
    np.savez(path, x=x, y=Y)
    with pytest.raises(DataError, match="object array"):
        load_npz(path)
    assert not marker.exists()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()  # np.save would append .npy to a path ending in .npz
    np.save(buffer, array)
    return buffer.getvalue()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda p: p.write_bytes(pickle.dumps({"x": 1})), r"not an \.npz file"),
        (lambda p: p.write_text("x,y\n1,2\n"), r"not an \.npz file"),
        (lambda p: p.write_bytes(b""), r"not an \.npz file"),
        (lambda p: p.write_bytes(npy_bytes(X)), r"single \.npy array"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), r"not a readable \.npz file"),
    ],
)
def test_load_npz_not_an_npz(tmp_path: Path, write, match: str) -> None:
    path = tmp_path / "data.npz"
    write(path)
    with pytest.raises(DataError, match=match) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_load_npz_zip_with_damaged_member(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY garbage")
        archive.writestr("y.npy", b"nonsense")
    with pytest.raises(DataError, match=r"not a readable \.npz file"):
        load_npz(path)


def test_load_npz_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="is a folder"):
        load_npz(tmp_path)


def test_from_arrays_names_the_data_set() -> None:
    with pytest.raises(DataError, match="data set 'mine': y must hold integer"):
        Dataset.from_arrays(X, Y.astype(float), "mine")
    data = Dataset.from_arrays(X.astype(np.float64), Y.astype(np.uint8), "mine")
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
