"""Parsers of the published file formats: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powersave.data import DataError
from powersave.data.formats import (
    CIFAR10_RECORD_BYTES,
    CIFAR10_TEST_MEMBERS,
    CIFAR10_TRAIN_MEMBERS,
    IDX_DTYPES,
    idx_images,
    idx_labels,
    parse_cifar10_batch,
    parse_idx,
    read_cifar10_binary,
    read_idx_gz,
    read_tar_members,
)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file holding ``array``, written independently of the parser."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(IDX_DTYPES[code]).tobytes()


def cifar_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: label byte, then R, G, B planes of 1024 bytes each."""
    return b"".join(
        bytes([int(label)]) + image.astype(np.uint8).tobytes()
        for image, label in zip(images, labels, strict=True)
    )


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- IDX ---------------------------------------------------------------------------------------


def test_idx_uint8_images_and_labels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    got = parse_idx(idx_bytes(images))
    assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
    np.testing.assert_array_equal(got, images)
    x = idx_images(got, "test")
    assert x.shape == (5, 1, 28, 28)  # (N, C, H, W)
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(idx_labels(parse_idx(idx_bytes(labels)), "test", 10), labels)


def test_idx_header_is_big_endian() -> None:
    # Hand-written: 2 x 3 uint8 matrix; dims stored as 00 00 00 02 and 00 00 00 03.
    data = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(parse_idx(data), [[1, 2, 3], [4, 5, 6]])
    # int16 elements are big-endian too: 0x0102 = 258.
    data = bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 0x01, 0x02])
    got = parse_idx(data)
    assert got.dtype == np.int16 and got.dtype.isnative and got.tolist() == [258]


@settings(max_examples=40, deadline=None)
@given(
    code=st.sampled_from(sorted(IDX_DTYPES)),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_idx_round_trip_every_type(code: int, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    array = (rng.normal(size=shape) * 50).astype(IDX_DTYPES[code].newbyteorder("="))
    got = parse_idx(idx_bytes(array, code))
    assert got.shape == tuple(shape) and got.dtype == array.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than a header"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "magic number 1f8b0800"),  # still gzipped
        (b"<htm", "magic number"),  # a web page saved in its place
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]), "unknown IDX element type 0x07"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 5]), "truncated inside its header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3]), "only 3 bytes follow"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), "1 bytes follow"),
    ],
)
def test_idx_errors(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_idx(data, "file X")


def test_idx_gz(tmp_path: Path) -> None:
    images = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    path = tmp_path / "a-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx_gz(path), images)

    path.write_bytes(idx_bytes(images))  # not gzipped
    with pytest.raises(DataError, match=f"{path} is not a readable gzip file"):
        read_idx_gz(path)
    path.write_bytes(gzip.compress(idx_bytes(images))[:-12])  # truncated stream
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_idx_gz(path)
    with pytest.raises(DataError, match="does not exist"):
        read_idx_gz(tmp_path / "missing.gz")


def test_idx_images_and_labels_checks() -> None:
    with pytest.raises(DataError, match=r"images of shape \(N, H, W\)"):
        idx_images(np.zeros((2, 3), np.uint8), "f")
    with pytest.raises(DataError, match=r"uint8 images.*int16"):
        idx_images(np.zeros((2, 3, 3), np.int16), "f")
    with pytest.raises(DataError, match=r"labels of shape \(N,\)"):
        idx_labels(np.zeros((2, 1), np.uint8), "f", 10)
    with pytest.raises(DataError, match="label 10 is out of range for 10 classes"):
        idx_labels(np.array([0, 10], np.uint8), "f", 10)


# -- CIFAR-10 binary -----------------------------------------------------------------------------


def test_cifar_batch_layout() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    labels = np.array([9, 0, 4], np.uint8)
    x, y = parse_cifar10_batch(cifar_batch(images, labels))
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    # Byte 1 of a record is the red value of the top-left pixel, byte 1025 the green one.
    record = bytearray(CIFAR10_RECORD_BYTES)
    record[0], record[1], record[1 + 1024], record[1 + 2048 + 32] = 7, 11, 22, 33
    x, y = parse_cifar10_batch(bytes(record))
    assert y.tolist() == [7]
    assert x[0, 0, 0, 0] == 11 and x[0, 1, 0, 0] == 22 and x[0, 2, 1, 0] == 33


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (bytes(CIFAR10_RECORD_BYTES - 1), "not a whole number of 3073-byte records"),
        (bytes(2 * CIFAR10_RECORD_BYTES + 5), "truncated or not a CIFAR-10 binary batch"),
        (bytes([10]) + bytes(CIFAR10_RECORD_BYTES - 1), "label 10 is out of range"),
    ],
)
def test_cifar_batch_errors(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_cifar10_batch(data, "batch X")


def cifar_archive(n_per_batch: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A small ``cifar-10-binary.tar.gz`` and the (images, labels) of each of its 6 batches."""
    rng = np.random.default_rng(seed)
    members = CIFAR10_TRAIN_MEMBERS + CIFAR10_TEST_MEMBERS
    images = rng.integers(0, 256, size=(len(members), n_per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(len(members), n_per_batch), dtype=np.uint8)
    content = {m: cifar_batch(images[i], labels[i]) for i, m in enumerate(members)}
    content["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n"
    return tar_gz(content), images, labels


def test_cifar_archive(tmp_path: Path) -> None:
    data, images, labels = cifar_archive(4)
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(data)
    x_train, y_train, x_test, y_test = read_cifar10_binary(path)
    assert x_train.shape == (20, 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(x_train, images[:5].reshape(20, 3, 32, 32))  # batches 1..5
    np.testing.assert_array_equal(y_train, labels[:5].reshape(20))
    np.testing.assert_array_equal(x_test, images[5])
    np.testing.assert_array_equal(y_test, labels[5])
    assert not any(tmp_path.glob("cifar-10-batches-bin*"))  # nothing extracted


def test_cifar_archive_errors(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-binary.tar.gz"
    good = {m: bytes(CIFAR10_RECORD_BYTES) for m in CIFAR10_TRAIN_MEMBERS + CIFAR10_TEST_MEMBERS}

    path.write_bytes(tar_gz({k: v for k, v in good.items() if "test" not in k}))
    with pytest.raises(DataError, match=r"lacks member.*test_batch\.bin"):
        read_cifar10_binary(path)

    path.write_bytes(tar_gz({**good, CIFAR10_TEST_MEMBERS[0]: bytes(100)}))
    with pytest.raises(DataError, match=r"test_batch\.bin is 100 bytes"):
        read_cifar10_binary(path)

    path.write_bytes(tar_gz(good)[:-200])  # truncated download
    with pytest.raises(DataError, match=r"not a readable \.tar\.gz archive"):
        read_cifar10_binary(path)

    path.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(DataError, match=r"not a readable \.tar\.gz archive"):
        read_cifar10_binary(path)

    with pytest.raises(DataError, match="does not exist"):
        read_cifar10_binary(tmp_path / "missing.tar.gz")


def test_tar_member_must_be_a_regular_file(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        link = tarfile.TarInfo("batch.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=r"batch\.bin is not a regular file"):
        read_tar_members(path, ("batch.bin",))
