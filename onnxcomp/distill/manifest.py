"""The manifest of a distillation export (``OUT/manifest.json``).

The manifest has two parts (the format is documented in docs/distill-format.md):

* ``plan`` -- everything that determines the stored bytes: the teacher's
  SHA-256 and interface, the settings, the stored tensors with dtypes and
  per-row shapes, the samples (count, ids, views), the augmentation, the
  preprocessing and the shard layout. Its canonical JSON hashes to the
  ``export_id`` every shard records, so a shard from another export is never
  mixed in.
* ``info`` -- provenance that may differ between runs of the same export
  (paths, time, onnxcomp version, batch size, sizes).

Resuming an export (or running another ``--shard i/n`` part) recomputes the
plan and requires it to equal the stored one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from ..errors import InputError, OutputError
from .files import hash_file_into, write_file_atomic
from .transforms import StoredTensor

FORMAT = "onnxcomp-distill"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclasses.dataclass
class Manifest:
    plan: dict[str, Any]
    info: dict[str, Any]

    @property
    def export_id(self) -> str:
        return hashlib.sha256(canonical_json(self.plan)).hexdigest()

    @property
    def tensors(self) -> list[StoredTensor]:
        return [StoredTensor.from_dict(t) for t in self.plan["tensors"]]

    @property
    def ids(self) -> list[str]:
        return self.plan["samples"]["ids"]

    @property
    def samples(self) -> int:
        return int(self.plan["samples"]["count"])

    @property
    def views(self) -> int:
        return int(self.plan["samples"]["views"])

    @property
    def rows(self) -> int:
        return self.samples * self.views

    @property
    def samples_per_shard(self) -> int:
        return int(self.plan["shards"]["samples_per_shard"])

    @property
    def shard_count(self) -> int:
        return int(self.plan["shards"]["count"])

    @property
    def teacher_sha256(self) -> str:
        return self.plan["teacher"]["sha256"]

    def shard_samples(self, index: int) -> tuple[int, int]:
        """Sample range ``[start, stop)`` of shard ``index``."""
        start = index * self.samples_per_shard
        return start, min(start + self.samples_per_shard, self.samples)

    def shard_rows(self, index: int) -> tuple[int, int]:
        start, stop = self.shard_samples(index)
        return start * self.views, stop * self.views

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "export_id": self.export_id,
                "plan": self.plan, "info": self.info}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        """Raises InputError for anything that is not a manifest this version reads."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise InputError(f"{where}: not an onnxcomp distillation manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{where}: format version {data.get('format_version')} is not supported (this onnxcomp reads {FORMAT_VERSION})")
        try:
            manifest = cls(plan=dict(data["plan"]), info=dict(data.get("info") or {}))
            tensors = manifest.tensors
            consistent = (
                len(manifest.ids) == manifest.samples
                and manifest.shard_count == -(-manifest.samples // manifest.samples_per_shard)
                and len({t.key for t in tensors}) == len(tensors)
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: malformed manifest ({type(err).__name__}: {err})") from err
        if not consistent:
            raise InputError(f"{where}: inconsistent manifest (sample ids, shard count or tensor names)")
        if data.get("export_id") != manifest.export_id:
            raise InputError(f"{where}: the plan does not match its export_id (the manifest was edited or is corrupt)")
        return manifest


def read_manifest(out: Path) -> Manifest:
    """The manifest of the export in ``out``.

    Raises:
        InputError: Missing, unreadable or malformed.
    """
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{out}: no {MANIFEST_NAME}; not a distillation export (or it was never started)")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable ({err})") from err
    return Manifest.from_dict(data, str(path))


def create_or_match(out: Path, manifest: Manifest) -> bool:
    """Write ``manifest`` into ``out``, or check the one already there plans the same export.

    Safe when several processes start at once: the first writer wins and the
    others compare against it.

    Returns:
        True if this call created the manifest.

    Raises:
        OutputError: ``out`` holds a different export, or is not writable.
    """
    path = Path(out) / MANIFEST_NAME
    if not path.exists() and write_file_atomic(path, manifest.to_json(), exclusive=True):
        return True
    try:
        existing = read_manifest(out)
    except InputError as err:
        raise OutputError(f"{out}: holds an unreadable export ({err}); choose another folder or delete it") from err
    if existing.plan != manifest.plan:
        raise OutputError(
            f"{out}: holds a different export ({describe_difference(existing.plan, manifest.plan)}); "
            "choose another folder or delete it"
        )
    return False


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between two plans, in a few words."""
    if old.get("teacher", {}).get("sha256") != new.get("teacher", {}).get("sha256"):
        return f"teacher sha256 {old['teacher']['sha256'][:12]}… there, {new['teacher']['sha256'][:12]}… now"
    old_s, new_s = old.get("samples", {}), new.get("samples", {})
    if old_s.get("count") != new_s.get("count"):
        return f"{old_s.get('count')} samples there, {new_s.get('count')} now"
    if old_s.get("ids") != new_s.get("ids"):
        first = next(i for i, (a, b) in enumerate(zip(old_s["ids"], new_s["ids"])) if a != b)
        return f"sample {first} is '{old_s['ids'][first]}' there, '{new_s['ids'][first]}' now"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    details = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            sub = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            details.extend(f"{key}.{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sub)
        else:
            details.append(f"{key} differs")
    return "; ".join(details)[:400]


def teacher_sha256(model: str | os.PathLike | onnx.ModelProto, *, loaded: onnx.ModelProto | None = None) -> str:
    """SHA-256 identifying a teacher.

    For a file: of its bytes, followed by the bytes of each external-data file
    it references (sorted by location), so ``sha256sum model.onnx`` matches for
    self-contained models. For an in-memory model: of its deterministic
    serialization.

    A file is read only after the checks of :func:`onnxcomp.model_io.load_model`
    (a regular file, external data inside the model's folder, ...); only
    tensors marked EXTERNAL count, so a stray ``external_data`` entry never
    makes it open a file. ``loaded``: the file as ``load_model`` returned it,
    to spare a second parse.

    Raises:
        InputError: As ``load_model``.
    """
    from ..external_data import external_info, is_pinned
    from ..model_io import iter_tensors, load_model

    digest = hashlib.sha256()
    if isinstance(model, onnx.ModelProto):
        digest.update(model.SerializeToString(deterministic=True))
        return digest.hexdigest()
    path = Path(model)
    proto = loaded if loaded is not None else load_model(path)
    folder = os.path.realpath(path.parent)
    locations = sorted({external_info(t)["location"] for t in iter_tensors(proto) if is_pinned(t)},
                       key=lambda location: os.path.relpath(location, folder))
    hash_file_into(digest, path)
    for location in locations:
        hash_file_into(digest, Path(location))
    return digest.hexdigest()
