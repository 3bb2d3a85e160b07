"""Downloads into the data cache and data sets by name, against a local HTTP server only.

Every URL fetched here points at a server on 127.0.0.1 started and stopped by the test; the
real sources are never contacted.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from powersave.data import (
    DataError,
    Dataset,
    DatasetSource,
    RemoteFile,
    dataset_names,
    fetch_dataset,
    load_dataset,
    load_mnist10k,
    registry,
    resolve_cache_dir,
    save_npz,
)
from powersave.data import download as download_module
from powersave.data.download import ENV_VAR, default_cache_dir, fetch
from powersave.data.formats import CIFAR10_TEST_MEMBERS, CIFAR10_TRAIN_MEMBERS, IDX_DTYPES
from powersave.data.registry import IDX_FILES, read_cifar10_files, read_idx_files

# -- a local server --------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path not in self.server.files:
            self.send_error(404)
            return
        body, mode = self.server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # announce the whole file, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []

    def serve(self, name: str, body: bytes, mode: str = "ok") -> str:
        self.files[f"/{name}"] = (body, mode)
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture
def refused_url() -> str:
    """A URL on a local port that nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No test may write to the real cache, whatever the machine's environment says.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env-cache"))
    monkeypatch.setattr(download_module, "_CHUNK", 100)  # several chunks even for small files


def remote_for(name: str, url: str | tuple[str, ...], body: bytes, **kwargs: object) -> RemoteFile:
    urls = (url,) if isinstance(url, str) else url
    digests = {
        "size": len(body),
        "md5": hashlib.md5(body).hexdigest(),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return RemoteFile(name, urls, **{**digests, **kwargs})  # type: ignore[arg-type]


PAYLOAD = bytes(range(256)) * 20  # 5120 bytes


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed uint8 IDX file (magic 00 00 08 ndim, big-endian uint32 sizes, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def cifar_archive(n_per_batch: int) -> bytes:
    """A small ``cifar-10-binary.tar.gz``: 6 batches of records (label byte, 3072 pixel bytes)."""
    rng = np.random.default_rng(4)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in CIFAR10_TRAIN_MEMBERS + CIFAR10_TEST_MEMBERS:
            labels = rng.integers(0, 10, n_per_batch, dtype=np.uint8)
            pixels = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            data = np.concatenate([labels[:, None], pixels], axis=1).tobytes()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- fetch -----------------------------------------------------------------------------------


def test_download_then_cached(server: _Server, tmp_path: Path, capsys) -> None:
    remote = remote_for("a.bin", server.serve("a.bin", PAYLOAD), PAYLOAD)
    folder = tmp_path / "cache" / "set"  # created on demand
    path = fetch(remote, folder, progress=True)
    assert path == folder / "a.bin" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin"]  # no temporary left
    assert server.requests == ["/a.bin"]
    assert "a.bin" in capsys.readouterr().err  # the progress bar
    # In the cache now: checked, not downloaded again.
    assert fetch(remote, folder) == path
    assert fetch(remote, folder, download=False) == path
    assert server.requests == ["/a.bin"]


def test_checksum_mismatch_discards_the_download(server: _Server, tmp_path: Path) -> None:
    url = server.serve("a.bin", PAYLOAD)
    tampered = PAYLOAD[:-1] + b"\x00"  # same size, other bytes
    remote = remote_for("a.bin", url, tampered)
    with pytest.raises(DataError) as info:
        fetch(remote, tmp_path, progress=False)
    message = str(info.value)
    assert url in message and "its sha256 is " + hashlib.sha256(PAYLOAD).hexdigest() in message
    assert "download was discarded" in message and str(tmp_path / "a.bin") in message
    assert list(tmp_path.iterdir()) == []


def test_md5_only_file_is_checked(server: _Server, tmp_path: Path) -> None:
    url = server.serve("a.bin", PAYLOAD)
    remote = RemoteFile("a.bin", (url,), md5=hashlib.md5(b"other").hexdigest())
    with pytest.raises(DataError, match="its md5 is"):
        fetch(remote, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    good = RemoteFile("a.bin", (url,), md5=hashlib.md5(PAYLOAD).hexdigest())
    assert fetch(good, tmp_path, progress=False).read_bytes() == PAYLOAD


def test_oversized_download_is_stopped(server: _Server, tmp_path: Path) -> None:
    url = server.serve("a.bin", PAYLOAD * 4)
    with pytest.raises(DataError, match=f"more than the expected {len(PAYLOAD)} bytes"):
        fetch(remote_for("a.bin", url, PAYLOAD), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    url = server.serve("a.bin", PAYLOAD, mode="truncate")
    with pytest.raises(DataError, match=f"{len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        fetch(remote_for("a.bin", url, PAYLOAD), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.serve("a.bin", PAYLOAD)
    calls = []

    def update(self: object, chunk: bytes) -> None:
        calls.append(chunk)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(download_module._Digests, "update", update)
    with pytest.raises(KeyboardInterrupt):
        fetch(remote_for("a.bin", url, PAYLOAD), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_names_the_file_the_url_and_the_folder(refused_url: str, tmp_path: Path) -> None:
    remote = remote_for("file.bin", refused_url, PAYLOAD)
    with pytest.raises(DataError) as info:
        fetch(remote, tmp_path / "mnist", progress=False)
    message = str(info.value)
    assert "could not download file.bin" in message and "cannot connect" in message
    assert f"download {refused_url}" in message
    assert f"put it at {tmp_path / 'mnist' / 'file.bin'}" in message
    assert remote.sha256 in message and ENV_VAR in message
    assert list((tmp_path / "mnist").iterdir()) == []


def test_next_mirror_after_a_failure(server: _Server, refused_url: str, tmp_path: Path) -> None:
    missing = server.serve("gone.bin", b"")
    del server.files["/gone.bin"]  # 404
    good = server.serve("a.bin", PAYLOAD)
    remote = remote_for("a.bin", (refused_url, missing, good), PAYLOAD)
    assert fetch(remote, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests == ["/gone.bin", "/a.bin"]


def test_every_mirror_failing_is_reported(
    server: _Server, refused_url: str, tmp_path: Path
) -> None:
    missing = server.serve("gone.bin", b"")
    del server.files["/gone.bin"]
    with pytest.raises(DataError) as info:
        fetch(remote_for("a.bin", (refused_url, missing), PAYLOAD), tmp_path, progress=False)
    message = str(info.value)
    assert f"{refused_url}: cannot connect" in message and f"{missing}: HTTP 404" in message


def test_no_download_when_switched_off(server: _Server, tmp_path: Path) -> None:
    remote = remote_for("a.bin", server.serve("a.bin", PAYLOAD), PAYLOAD)
    with pytest.raises(DataError, match="does not exist, and downloading is switched off"):
        fetch(remote, tmp_path, download=False)
    assert server.requests == []
    (tmp_path / "a.bin").write_bytes(PAYLOAD)  # placed by hand, as the message says
    assert fetch(remote, tmp_path, download=False).read_bytes() == PAYLOAD
    assert server.requests == []


def test_damaged_cached_file(server: _Server, tmp_path: Path) -> None:
    remote = remote_for("a.bin", server.serve("a.bin", PAYLOAD), PAYLOAD)
    (tmp_path / "a.bin").write_bytes(PAYLOAD[:100])
    with pytest.raises(DataError, match=f"copy at {tmp_path / 'a.bin'} is not the published"):
        fetch(remote, tmp_path, download=False)
    assert fetch(remote, tmp_path, progress=False).read_bytes() == PAYLOAD  # replaced
    assert server.requests == ["/a.bin"]


def test_folder_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a.bin").mkdir()
    with pytest.raises(DataError, match="in the way"):
        fetch(remote_for("a.bin", "http://127.0.0.1:9/a.bin", PAYLOAD), tmp_path)


def test_remote_file_checks_its_fields() -> None:
    ok = {"urls": ("https://example.org/a",), "md5": "0" * 32}
    RemoteFile("a", **ok)
    with pytest.raises(ValueError, match="plain file name"):
        RemoteFile("../a", **ok)
    with pytest.raises(ValueError, match="http"):
        RemoteFile("a", ("file:///etc/passwd",), md5="0" * 32)
    with pytest.raises(ValueError, match="md5 or sha256"):
        RemoteFile("a", ("https://example.org/a",))
    with pytest.raises(ValueError, match="64 lower-case hex"):
        RemoteFile("a", ("https://example.org/a",), sha256="ABC")


# -- cache folder ------------------------------------------------------------------------------


def test_cache_folder_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == default_cache_dir() == tmp_path / "xdg" / "powersave"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir() == Path.home() / ".cache" / "powersave"


# -- data sets by name -------------------------------------------------------------------------


def tiny_mnist(server: _Server, n_train: int = 40, n_test: int = 12) -> DatasetSource:
    """An MNIST look-alike served by ``server``: four gzipped IDX files."""
    rng = np.random.default_rng(3)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: np.arange(n_train, dtype=np.uint8) % 10,
        IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: np.arange(n_test, dtype=np.uint8) % 10,
    }
    files = []
    for name, array in arrays.items():
        body = gzip.compress(idx_bytes(array))
        files.append(remote_for(name, server.serve(f"tiny/{name}", body), body))
    return DatasetSource("tiny-mnist", "Tiny", tuple(files), read_idx_files, n_train, n_test, 8)


def test_load_downloads_into_the_env_folder(server: _Server, tmp_path: Path) -> None:
    source = tiny_mnist(server)
    splits = load_dataset(source, progress=False)
    folder = tmp_path / "env-cache" / "tiny-mnist"  # $POWERSAVE_DATA / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)
    assert (len(splits.train), len(splits.calibration), len(splits.test)) == (32, 8, 12)
    for part, label in ((splits.train, "train"), (splits.calibration, "calibration")):
        assert part.x.shape[1:] == (1, 28, 28) and part.x.dtype == np.float32
        assert part.y.dtype == np.int64 and part.name == f"Tiny ({label})"
        assert 0.0 <= part.x.min() and part.x.max() <= 1.0
    # The test split is the official test file, in order.
    np.testing.assert_array_equal(splits.test.y, np.arange(12) % 10)
    # Train and calibration partition the official training set, each in official order.
    order = np.concatenate([splits.train.y, splits.calibration.y])
    assert sorted(order.tolist()) == sorted((np.arange(40) % 10).tolist())
    # A second load is offline and identical.
    n = len(server.requests)
    again = load_dataset(source, download=False)
    assert len(server.requests) == n
    np.testing.assert_array_equal(again.calibration.x, splits.calibration.x)
    # cache_dir= overrides the environment.
    load_dataset(source, cache_dir=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "tiny-mnist" / IDX_FILES[0]).is_file()


def test_calibration_carving_is_fixed(server: _Server) -> None:
    source = tiny_mnist(server)
    a = load_dataset(source, progress=False, calibration=10)
    assert (len(a.train), len(a.calibration)) == (30, 10)
    b = load_dataset(source, progress=False, calibration=10)
    np.testing.assert_array_equal(a.calibration.x, b.calibration.x)
    # The held-out samples are the first 10 of PCG64(0)'s permutation of 40, sorted.
    held = np.sort(np.random.Generator(np.random.PCG64(0)).permutation(40)[:10])
    np.testing.assert_array_equal(a.calibration.y, held % 10)
    with pytest.raises(DataError, match="between 1 and 39 of the 40 training samples"):
        load_dataset(source, calibration=40, progress=False)


def test_wrong_sample_count_is_an_error(server: _Server) -> None:
    source = replace(tiny_mnist(server), n_train=60000)
    with pytest.raises(DataError, match="hold 40 training samples, expected 60000"):
        load_dataset(source, progress=False)


def test_offline_load_lists_every_missing_file(refused_url: str, tmp_path: Path) -> None:
    base = refused_url.rsplit("/", 1)[0]
    files = tuple(
        RemoteFile(name, (f"{base}/{name}",), md5="0" * 32) for name in ("a.gz", "b.gz", "c.gz")
    )
    source = DatasetSource("offline", "Offline", files, read_idx_files, 1, 1)
    (tmp_path / "env-cache" / "offline").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        fetch_dataset(source, progress=False)
    message = str(info.value)
    folder = tmp_path / "env-cache" / "offline"
    assert f"put it at {folder / 'a.gz'}" in message
    assert f"{folder / 'b.gz'}  from {base}/b.gz" in message
    assert f"{folder / 'c.gz'}  from {base}/c.gz" in message


def test_cifar10_like_normalised(server: _Server) -> None:
    body = cifar_archive(6)  # 30 training, 6 test images
    remote = remote_for("cifar-10-binary.tar.gz", server.serve("c.tgz", body), body)
    source = DatasetSource("tiny-cifar", "CIFAR", (remote,), read_cifar10_files, 30, 6, 5)
    plain = load_dataset(source, progress=False)
    assert plain.train.x.shape == (25, 3, 32, 32) and len(plain.test) == 6
    norm = load_dataset(source, normalize=True, progress=False)
    assert norm.train.name == "CIFAR, normalised (train)"
    x = norm.train.x.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    assert norm.test.x.min() < 0 < norm.test.x.max()  # signed: ON and OFF inputs
    # The same affine map per channel on every split, from the training split's statistics.
    t = plain.train.x.astype(np.float64)
    mean, std = t.mean(axis=(0, 2, 3)), t.std(axis=(0, 2, 3))
    expected = (plain.test.x - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(norm.test.x, expected, atol=1e-5)


def test_npz_path_is_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = Dataset.from_arrays(rng.random((50, 2, 3, 3)), np.arange(50) % 4, "mine")
    path = tmp_path / "mine.npz"
    save_npz(path, data)
    splits = load_dataset(str(path))
    assert (len(splits.train), len(splits.calibration), len(splits.test)) == (35, 5, 10)
    assert splits.test.name == "mine (test)"
    seen = np.concatenate([splits.train.y, splits.calibration.y, splits.test.y])
    assert sorted(seen.tolist()) == sorted(data.y.tolist())
    again = load_dataset(path, calibration=7)
    assert (len(again.train), len(again.calibration)) == (33, 7)
    tiny = tmp_path / "tiny.npz"
    save_npz(tiny, Dataset.from_arrays(rng.random((3, 2)), [0, 1, 0], "tiny"))
    with pytest.raises(DataError, match="too few to split"):
        load_dataset(tiny)


def test_names(tmp_path: Path) -> None:
    assert dataset_names() == ("mnist", "fashion-mnist", "cifar10", "mnist10k")
    bundled = load_dataset("MNIST10K")
    assert bundled is load_mnist10k()  # delegated, not copied
    assert bundled.test.name == "MNIST-10k sample (test)"
    with pytest.raises(DataError, match="fixed split"):
        load_dataset("mnist10k", calibration=10)
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="no downloadable data set"):
        fetch_dataset("mnist10k")


def test_known_names_stay_offline_when_told(tmp_path: Path) -> None:
    # download=False on an empty cache: an error naming each file, and no connection attempted.
    for name, first in (("mnist", IDX_FILES[0]), ("fashion_mnist", IDX_FILES[0])):
        with pytest.raises(DataError) as info:
            load_dataset(name, cache_dir=tmp_path, download=False)
        assert "downloading is switched off" in str(info.value) and first in str(info.value)
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz does not exist"):
        load_dataset("CIFAR-10", cache_dir=tmp_path, download=False)


def test_registered_sources_are_complete() -> None:
    for source in registry.DATASETS.values():
        for remote in source.files:
            assert remote.size and remote.md5 and remote.sha256  # every file fully pinned
            assert all(url.endswith("/" + remote.name) for url in remote.urls)
    assert [r.name for r in registry.MNIST.files] == list(IDX_FILES)
    assert [r.name for r in registry.FASHION_MNIST.files] == list(IDX_FILES)
    assert registry.CIFAR10.files[0].urls == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    )
    assert IDX_DTYPES[0x08] == np.uint8
