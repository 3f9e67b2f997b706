"""Crash-safe file writing and hashing for distillation exports.

A file or folder becomes visible under its final name only by a rename after
its content is flushed to disk, so a reader never sees half-written data under
a final name. Write failures (disk full, permissions) become :class:`OutputError`
with one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

from ..errors import OutputError
from ..model_io import _fsync_dir, _write_bytes, temporary_file

fsync_dir = _fsync_dir

HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    hash_file_into(digest, path)
    return digest.hexdigest()


def hash_file_into(digest, path: Path) -> None:
    """Feed the bytes of ``path`` to a running hashlib digest."""
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)


class HashingWriter:
    """A binary file that hashes and counts what is written to it."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self.digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.bytes += len(view)
        return self._file.write(view)

    def close(self) -> None:
        """Flush to disk and close."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def write_file_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` through a flushed temporary sibling.

    Args:
        exclusive: Do not replace an existing ``path`` (hard-link the temporary
            file into place, which fails if ``path`` exists).

    Returns:
        False when ``exclusive`` and ``path`` already existed (nothing written).

    Raises:
        OutputError: The folder is not writable or the disk is full.
    """
    folder = path.parent
    tmp = temporary_file(folder, path.name)  # named so that a later run removes it after a crash
    try:
        _write_bytes(tmp, data)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if path.exists():  # no hard links on this filesystem: best effort
                    return False
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as err:
        raise output_error(path, err) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(folder)
    return True


def output_error(path: Path, err: OSError, hint: str = "") -> OutputError:
    """A one-line OutputError for a failed write."""
    reason = err.strerror or str(err)
    return OutputError(f"{path}: cannot write ({reason}){'; ' + hint if hint else ''}")
