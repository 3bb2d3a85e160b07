"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

The data goes to a temporary file in the target's own folder (so that the final rename stays on
one file system), is flushed and fsynced, and then replaces the target with :func:`os.replace`.
On any exception, KeyboardInterrupt included, the temporary file is removed and the target is left
as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    # os.umask can only be read by setting it, which would race with other threads creating
    # files; Linux reports it in /proc, so use that where it exists.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a folder; give a file path")
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {target}: folder {target.parent} does not exist; create it first"
        )


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable. Not possible everywhere (Windows), hence best effort.
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], *, text: bool = False, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears only once the ``with`` block succeeds.

    Args:
        path: the file to create or replace.
        text: yield a text file (``encoding``, ``\\n`` newlines) instead of a binary one.

    Yields:
        a file object on a temporary file beside ``path``.
    """
    target = Path(path)
    _check_target(target)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_read_umask()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        handle = (
            os.fdopen(fd, "w", encoding=encoding, newline="\n") if text else os.fdopen(fd, "wb")
        )
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_folder(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, text=True, encoding=encoding) as handle:
        handle.write(text)
