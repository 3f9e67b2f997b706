"""Shards: the unit of writing, resuming and verifying an export.

Shard ``k`` holds the rows of samples ``[k S, (k+1) S)`` (``S`` samples per
shard, every view of a sample in the same shard) in the folder
``OUT/shards/<k:06d>/``: one ``.npy`` file per stored tensor (``[rows,
*shape]``, memory-mappable) and ``shard.json``, which records the export id,
the row range, a SHA-256 of the input samples, and the SHA-256 and size of
every file.

A shard is written in ``OUT/.partial/`` and renamed into ``shards/`` only once
every file is flushed, so a shard folder under its final name is complete by
construction; its checksums catch later damage. Interrupted writes leave only
``.partial/`` entries, which the next run of the same shard removes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from ..model_io import process_alive
from .files import HashingWriter, fsync_dir, output_error, sha256_file
from .manifest import Manifest

SHARDS_DIR = "shards"
PARTIAL_DIR = ".partial"
SHARD_RECORD = "shard.json"


def shard_dir(out: Path, index: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{index:06d}"


def write_shard(out: Path, manifest: Manifest, index: int, arrays: Mapping[str, np.ndarray], inputs_sha256: str) -> dict[str, Any]:
    """Write shard ``index`` atomically and return its record.

    If another process finished the same shard first, its shard is kept and
    this one discarded.

    Raises:
        OutputError: Writing failed (disk full, not writable); nothing of this
            shard is left behind.
    """
    out = Path(out)
    rows = manifest.shard_rows(index)
    tmp = out / PARTIAL_DIR / f"{index:06d}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    final = shard_dir(out, index)
    try:
        _make_partial(tmp)
        files = {}
        for tensor in manifest.tensors:
            array = arrays[tensor.key]
            expected = (rows[1] - rows[0], *tensor.shape)
            if array.shape != expected or array.dtype != np.dtype(tensor.dtype):
                raise AssertionError(f"shard {index} '{tensor.key}': {array.dtype}{list(array.shape)}, planned {tensor.dtype}{list(expected)}")
            files[tensor.key] = _write_array(tmp / tensor.file, array)
        record = {
            "export_id": manifest.export_id,
            "index": index,
            "rows": list(rows),
            "inputs_sha256": inputs_sha256,
            "files": files,
            "written": {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        }
        writer = HashingWriter(tmp / SHARD_RECORD)
        try:
            writer.write(json.dumps(record, indent=1, sort_keys=True).encode())
        finally:
            writer.close()
        fsync_dir(tmp)
        final.parent.mkdir(exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return _keep_existing(out, manifest, index)
        fsync_dir(final.parent)
        return record
    except OSError as err:
        raise output_error(final, err, f"shard {index} not written; finished shards are kept, run again to resume") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keep_existing(out: Path, manifest: Manifest, index: int) -> dict[str, Any]:
    record, problem = check_shard(out, manifest, index)
    if problem:
        raise OutputError(f"{shard_dir(out, index)}: {problem}; delete that folder and run again")
    return record


def _write_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    writer = HashingWriter(path)
    try:
        np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {"file": path.name, "sha256": writer.digest.hexdigest(), "bytes": writer.bytes}


def check_shard(out: Path, manifest: Manifest, index: int, *, checksums: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, problem)`` for shard ``index``: ``(None, None)`` when it is absent.

    Checks the record (export id, index, rows, files), the file sizes and,
    with ``checksums``, every file's SHA-256.
    """
    folder = shard_dir(out, index)
    if not folder.exists():
        return None, None
    try:
        record = json.loads((folder / SHARD_RECORD).read_bytes())
    except (OSError, ValueError) as err:
        return None, f"shard {index} has no readable {SHARD_RECORD} ({err})"
    problem = _record_problem(record, manifest, index)
    if problem is None:
        problem = _files_problem(folder, record["files"], checksums)
    return (record, None) if problem is None else (None, f"shard {index}: {problem}")


def _record_problem(record: Any, manifest: Manifest, index: int) -> str | None:
    if not isinstance(record, Mapping):
        return "malformed record"
    if record.get("export_id") != manifest.export_id:
        return "belongs to another export (export_id differs)"
    if record.get("index") != index or record.get("rows") != list(manifest.shard_rows(index)):
        return "record names another shard or row range"
    files = record.get("files")
    expected = {t.key: t.file for t in manifest.tensors}
    if not isinstance(files, Mapping) or {k: (v or {}).get("file") for k, v in files.items()} != expected:
        return "record lists other files than the manifest's tensors"
    return None


def _files_problem(folder: Path, files: Mapping[str, Any], checksums: bool) -> str | None:
    for key, entry in files.items():
        path = folder / entry["file"]
        try:
            size = path.stat().st_size
        except OSError:
            return f"file {entry['file']} ('{key}') is missing"
        if size != entry["bytes"]:
            return f"file {entry['file']} ('{key}') has {size} bytes, {entry['bytes']} recorded"
        if checksums and sha256_file(path) != entry["sha256"]:
            return f"file {entry['file']} ('{key}') fails its SHA-256 check (damaged)"
    return None


def scan_shards(
    out: Path, manifest: Manifest, indices: Iterable[int], *, checksums: bool, error: type[Exception], hint: str = ""
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Records of the present shards among ``indices`` and the absent ones.

    Raises:
        error: A present shard fails :func:`check_shard` (message + ``hint``).
    """
    records: dict[int, dict[str, Any]] = {}
    missing: list[int] = []
    for index in indices:
        record, problem = check_shard(out, manifest, index, checksums=checksums)
        if problem:
            raise error(f"{out}: {problem}{hint.format(folder=shard_dir(out, index))}")
        if record is None:
            missing.append(index)
        else:
            records[index] = record
    return records, missing


def _make_partial(tmp: Path, attempts: int = 5) -> None:
    """Create a shard's scratch folder under ``.partial``.

    Another part finishing at the same moment removes ``.partial`` when it is
    empty, possibly between the creation of ``.partial`` and of ``tmp`` in it;
    creating both again is then enough.
    """
    for attempt in range(attempts):
        try:
            tmp.mkdir(parents=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


_PARTIAL_NAME = re.compile(r"^(\d{6})\.(.+)\.(\d+)\.[0-9a-f]{8}$")
"""How :func:`write_shard` names a shard's scratch folder: ``<index>.<host>.<pid>.<random>``."""


def clear_partials(out: Path, indices: Iterable[int]) -> None:
    """Remove leftovers of interrupted writes of these shards.

    Only folders named as :func:`write_shard` names its scratch folders are
    touched, and not those of a process on this host that still runs (another
    part writing the same shard); anything else a user keeps in ``.partial``
    stays.
    """
    partial = Path(out) / PARTIAL_DIR
    if not partial.is_dir():
        return
    wanted = {f"{i:06d}" for i in indices}
    host = socket.gethostname()
    for entry in partial.iterdir():
        match = _PARTIAL_NAME.match(entry.name)
        if match is None or match.group(1) not in wanted or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match.group(3))
        if match.group(2) == host and pid != os.getpid() and process_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        partial.rmdir()  # only when empty
    return True
