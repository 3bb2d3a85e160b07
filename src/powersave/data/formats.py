"""Parsers for the files MNIST, Fashion-MNIST and CIFAR-10 are published in. Nothing unpickles.

IDX (MNIST, Fashion-MNIST; LeCun et al.): a 4-byte magic number ``00 00 TT DD`` where ``TT``
codes the element type (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D``
float32, ``0x0E`` float64) and ``DD`` the number of dimensions; then ``DD`` big-endian uint32
sizes; then the elements, big-endian, in C order. The published files are gzipped.

CIFAR-10 binary version (Krizhevsky, ``cifar-10-binary.tar.gz``): members
``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``, each a run of 3073-byte
records: one label byte (0–9) then 3072 pixel bytes, the 1024 red, 1024 green and 1024 blue
values of a 32 × 32 image in row-major order. The python version of the archive is pickled and
is deliberately not read.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from powersave.data.bundled import DataError

#: IDX element type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN_MEMBERS = tuple(f"{CIFAR10_FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_MEMBERS = (f"{CIFAR10_FOLDER}/test_batch.bin",)
CIFAR10_IMAGE_SHAPE = (3, 32, 32)  # (C, H, W)
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32  # label byte + pixels


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
    """Decode one uncompressed IDX file.

    Args:
        data: the whole file's bytes.
        where: names the file in error messages.

    Returns:
        an array of the stored shape in native byte order (uint8 stays uint8); it may be a
        read-only view of ``data``.

    Raises:
        DataError: wrong magic number, unknown element type, truncated file or trailing bytes.
    """
    if len(data) < 4:
        raise DataError(f"{where} is not an IDX file: {len(data)} bytes, shorter than a header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{where} is not an IDX file: magic number {data[:4].hex()} does not start with "
            "0000 (is it still gzipped, or a web page saved in its place?)"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(f"{where}: unknown IDX element type 0x{type_code:02X}; known: {known}")
    if ndim == 0:
        raise DataError(f"{where}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where} is truncated inside its header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header
    if body < expected:
        raise DataError(
            f"{where} is truncated: the header declares shape {shape} ({expected} bytes of "
            f"data) but only {body} bytes follow; download the file again"
        )
    if body > expected:
        raise DataError(
            f"{where}: {body - expected} bytes follow the {expected} bytes its header "
            f"declares (shape {shape}); the file is not a valid IDX file"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx_gz(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a gzipped IDX file, as MNIST and Fashion-MNIST publish them (see `parse_idx`)."""
    path = Path(path)
    where = f"data file {path}"
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise DataError(f"{where} does not exist") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{where} is not a readable gzip file ({exc}); download it again") from exc
    return parse_idx(data, where)


def idx_images(array: np.ndarray, where: str) -> np.ndarray:
    """Check an IDX array holds uint8 images ``(N, H, W)``; return them as ``(N, 1, H, W)``."""
    if array.dtype != np.uint8 or array.ndim != 3:
        raise DataError(
            f"{where}: expected uint8 images of shape (N, H, W), got {array.dtype} {array.shape}"
        )
    return array.reshape(array.shape[0], 1, *array.shape[1:])  # (N, C=1, H, W)


def idx_labels(array: np.ndarray, where: str, num_classes: int) -> np.ndarray:
    """Check an IDX array holds uint8 labels ``(N,)`` below ``num_classes``."""
    if array.dtype != np.uint8 or array.ndim != 1:
        raise DataError(
            f"{where}: expected uint8 labels of shape (N,), got {array.dtype} {array.shape}"
        )
    _check_labels(array, where, num_classes)
    return array


def _check_labels(labels: np.ndarray, where: str, num_classes: int) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{where}: label {int(labels.max())} is out of range for {num_classes} classes"
        )


def parse_cifar10_batch(
    data: bytes, where: str = "CIFAR-10 batch", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 binary batch.

    Returns:
        ``x`` uint8 ``(N, 3, 32, 32)`` (channels R, G, B) and ``y`` uint8 ``(N,)``.

    Raises:
        DataError: empty, not a whole number of 3073-byte records, or a label >= ``num_classes``.
    """
    if not data:
        raise DataError(f"{where} is empty")
    if len(data) % CIFAR10_RECORD_BYTES:
        raise DataError(
            f"{where} is {len(data)} bytes, not a whole number of {CIFAR10_RECORD_BYTES}-byte "
            "records (1 label byte + 3072 pixel bytes): truncated or not a CIFAR-10 binary batch"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0].copy()
    _check_labels(labels, where, num_classes)
    images = records[:, 1:].reshape(-1, *CIFAR10_IMAGE_SHAPE)  # (N, C, H, W), no copy
    return images, labels


def read_tar_members(path: str | os.PathLike[str], members: tuple[str, ...]) -> dict[str, bytes]:
    """The contents of the named regular-file members of a ``.tar.gz`` archive, read in one pass.

    Nothing is extracted, so the archive's paths never touch the file system.

    Raises:
        DataError: unreadable archive, a member missing or not a regular file.
    """
    path = Path(path)
    where = f"data file {path}"
    wanted = set(members)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name not in wanted:
                    continue
                if not member.isfile():
                    raise DataError(f"{where}: member {member.name} is not a regular file")
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file always has one
                found[member.name] = handle.read()
    except FileNotFoundError as exc:
        raise DataError(f"{where} does not exist") from exc
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{where} is not a readable .tar.gz archive ({exc}); download it again"
        ) from exc
    missing = [name for name in members if name not in found]
    if missing:
        raise DataError(f"{where} lacks member(s) {missing}")
    return found


def read_cifar10_binary(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``cifar-10-binary.tar.gz``: the five training batches, then the test batch.

    Returns:
        ``x_train`` uint8 ``(N, 3, 32, 32)``, ``y_train`` uint8 ``(N,)``, ``x_test``, ``y_test``
        likewise; batches concatenated in order (``data_batch_1`` first).
    """
    where = f"data file {Path(path)}"
    members = CIFAR10_TRAIN_MEMBERS + CIFAR10_TEST_MEMBERS
    found = read_tar_members(path, members)
    parsed = {
        name: parse_cifar10_batch(found.pop(name), f"{where}, member {name}") for name in members
    }

    def joined(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([parsed[n][0] for n in names]),
            np.concatenate([parsed[n][1] for n in names]),
        )

    return (*joined(CIFAR10_TRAIN_MEMBERS), *joined(CIFAR10_TEST_MEMBERS))
