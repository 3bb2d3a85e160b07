"""Files fetched into the data cache: checked against published checksums, written atomically.

The cache folder is, in order of precedence: the ``cache_dir`` argument, the environment variable
``POWERSAVE_DATA``, ``$XDG_CACHE_HOME/powersave``, ``~/.cache/powersave``. A download streams
into a hidden temporary file beside its target, hashing as it goes; only when the size and every
known digest match is it renamed to the final name (:func:`powersave._atomic.atomic_writer`), so
an interrupted or corrupted download never looks complete. A file already in the cache is
checked the same way before every use.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from powersave._atomic import atomic_writer
from powersave._version import __version__
from powersave.data.bundled import DataError

#: Environment variable naming the cache folder.
ENV_VAR = "POWERSAVE_DATA"
_CHUNK = 1 << 20  # bytes per read, for hashing and downloading
_TIMEOUT_S = 60.0  # per socket operation, not for the whole download


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/powersave`` if that variable is set, else ``~/.cache/powersave``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "powersave"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$POWERSAVE_DATA``, else the default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_cache_dir()


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where to get it and how to recognise it.

    Attributes:
        name: the file's name in its cache folder, e.g. ``"train-images-idx3-ubyte.gz"``.
        urls: ``http(s)`` addresses tried in order; the first is the canonical source.
        size: length in bytes, if known.
        md5: lower-case hex MD5, if known.
        sha256: lower-case hex SHA-256, if known. At least one of ``md5`` and ``sha256``.
    """

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.name or Path(self.name).name != self.name or self.name in (".", ".."):
            raise ValueError(f"remote file name {self.name!r} must be a plain file name")
        if not self.urls or not all(u.startswith(("http://", "https://")) for u in self.urls):
            raise ValueError(f"remote file {self.name}: give one or more http(s) URLs")
        if self.md5 is None and self.sha256 is None:
            raise ValueError(f"remote file {self.name}: give its md5 or sha256, or both")
        if self.md5 is not None and not _is_hex(self.md5, 32):
            raise ValueError(f"remote file {self.name}: md5 must be 32 lower-case hex digits")
        if self.sha256 is not None and not _is_hex(self.sha256, 64):
            raise ValueError(f"remote file {self.name}: sha256 must be 64 lower-case hex digits")
        if self.size is not None and self.size < 0:
            raise ValueError(f"remote file {self.name}: size must be >= 0")

    def describe(self) -> str:
        """The expected size and digests, for messages."""
        parts = [f"{self.size} bytes"] if self.size is not None else []
        if self.sha256:
            parts.append(f"sha256 {self.sha256}")
        if self.md5:
            parts.append(f"md5 {self.md5}")
        return ", ".join(parts)


class _Digests:
    """Size, MD5 and SHA-256 of a byte stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)  # only to match published MD5s
        self.sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.md5.update(chunk)
        self.sha256.update(chunk)

    def mismatch(self, remote: RemoteFile) -> str | None:
        """What differs from ``remote``'s published size and digests, or None."""
        if remote.size is not None and self.size != remote.size:
            return f"it is {self.size} bytes, expected {remote.size}"
        if remote.sha256 is not None and self.sha256.hexdigest() != remote.sha256:
            return f"its sha256 is {self.sha256.hexdigest()}, expected {remote.sha256}"
        if remote.md5 is not None and self.md5.hexdigest() != remote.md5:
            return f"its md5 is {self.md5.hexdigest()}, expected {remote.md5}"
        return None


def file_mismatch(path: str | os.PathLike[str], remote: RemoteFile) -> str | None:
    """Why the file at ``path`` is not ``remote`` (size or a digest differs), or None if it is."""
    digests = _Digests()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digests.update(chunk)
    return digests.mismatch(remote)


class _ContentError(Exception):
    """A download completed, but what arrived is not the published file."""


def _stream(response: IO[bytes], out: IO[Any], remote: RemoteFile, bar: tqdm) -> _Digests:
    digests = _Digests()
    while chunk := response.read(_CHUNK):
        digests.update(chunk)
        if remote.size is not None and digests.size > remote.size:
            # Stop early: a server sending more than the published size is sending something else.
            raise _ContentError(f"the server sent more than the expected {remote.size} bytes")
        out.write(chunk)
        bar.update(len(chunk))
    return digests


def _download(url: str, target: Path, remote: RemoteFile, progress: bool) -> None:
    """Download ``url`` to ``target``; the file appears only if it matches ``remote``."""
    request = urllib.request.Request(url, headers={"User-Agent": f"powersave/{__version__}"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.isdigit() else None
        bar = tqdm(
            total=announced or remote.size,
            desc=remote.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            leave=False,
        )
        with bar, atomic_writer(target) as out:
            digests = _stream(response, out, remote, bar)
            if announced is not None and digests.size < announced:
                raise ConnectionError(
                    f"the connection closed after {digests.size} of {announced} bytes"
                )
            problem = digests.mismatch(remote)
            if problem is not None:
                # Raised inside atomic_writer: the temporary file is removed, the target untouched.
                raise _ContentError(problem)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    return str(exc) or type(exc).__name__


def fetch(
    remote: RemoteFile,
    folder: str | os.PathLike[str],
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """The path of ``remote`` in ``folder``, downloading it there first if needed.

    A file already in ``folder`` is used if its size and digests match; otherwise (absent or
    different) it is downloaded from each URL in turn until one copy matches.

    Args:
        remote: the file to get.
        folder: where it lives; created if missing.
        download: if False, never go online: a missing or different file is an error.
        progress: show a tqdm progress bar while downloading.

    Raises:
        DataError: the file is not in ``folder`` and cannot be downloaded (offline, refused,
            wrong checksum, ...). The message names the URL and the exact path to place a copy at.
    """
    folder = Path(folder)
    path = folder / remote.name
    stale = None
    if path.is_file():
        try:
            stale = file_mismatch(path, remote)
        except OSError as exc:
            raise DataError(f"cannot read data file {path}: {exc}") from exc
        if stale is None:
            return path
        stale = f"the copy at {path} is not the published file: {stale}"
    elif path.exists():
        raise DataError(f"{path} is in the way of data file {remote.name}: it is not a file")
    sources = remote.urls[0] + "".join(f" or {url}" for url in remote.urls[1:])
    place = (
        f"To work offline, download {sources} on a machine with internet access and put it "
        f"at {path} ({remote.describe()}). The folder is chosen by cache_dir=, else the "
        f"environment variable {ENV_VAR}."
    )
    if not download:
        found = stale or f"data file {path} does not exist"
        raise DataError(f"{found}, and downloading is switched off. {place}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {folder} ({exc}); choose a writable folder with "
            f"cache_dir= or the environment variable {ENV_VAR}"
        ) from exc
    failures = []
    for url in remote.urls:
        try:
            _download(url, path, remote, progress)
        except _ContentError as exc:
            failures.append(f"{url}: downloaded, but {exc}; the download was discarded")
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, ...
            failures.append(f"{url}: {_reason(exc)}")
        else:
            return path
    lines = "\n  ".join(failures)
    before = f" ({stale})" if stale else ""
    raise DataError(f"could not download {remote.name}{before}:\n  {lines}\n{place}")
