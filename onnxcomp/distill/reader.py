"""Reading an export back: :class:`TeacherOutputs`.

Arrays are memory-mapped from the shard files (``numpy.load(mmap_mode="r")``),
so opening a large export costs no memory, random access touches only the
pages it needs, and several training processes share the OS page cache.
"""

from __future__ import annotations

import collections
import enum
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import InputSpec, open_data
from ..errors import DataError, InputError, UsageError
from .manifest import Manifest, read_manifest, teacher_sha256
from .samples import digest_samples, iter_range
from .shards import check_shard, scan_shards, shard_dir
from .transforms import StoredTensor


class Verify(enum.Enum):
    """When shard checksums are checked on reading.

    OPEN hashes every file when the export is opened; LAZY hashes a shard the
    first time it is read; SIZES checks records and file sizes only.
    """

    OPEN = "open"
    LAZY = "lazy"
    SIZES = "sizes"


class TeacherOutputs:
    """A finished distillation export, memory-mapped.

    Rows are sample views in sample order (row ``i * views + v`` is view ``v``
    of sample ``i``; without augmentation, row = sample)::

        outputs = TeacherOutputs("out/")
        outputs["logits"]                 # not supported: use take()/batches()
        outputs[12]                       # {"logits": array, ...} of row 12
        outputs.by_id("img_0042.png")     # the same, by sample id
        for batch in outputs.batches(256, shuffle=True, seed=epoch):
            batch["rows"], batch["logits"]

    Args:
        path: The export folder.
        verify: When to check shard checksums (see :class:`Verify`).
        max_open_shards: Shards kept memory-mapped at once (least recently
            used ones are closed).

    Raises:
        InputError: No manifest, a malformed one, missing shards (an unfinished
            export), or a shard whose record, sizes or checksums do not match.
    """

    def __init__(self, path: str | os.PathLike, *, verify: Verify | str = Verify.OPEN, max_open_shards: int = 64):
        self.path = Path(path)
        self._manifest: Manifest = read_manifest(self.path)
        try:
            self.verify = Verify(verify)
        except ValueError:
            raise UsageError(f"verify must be one of {', '.join(v.value for v in Verify)}, got {verify!r}") from None
        self.tensors: dict[str, StoredTensor] = {t.key: t for t in self._manifest.tensors}
        self._max_open = max(1, max_open_shards)
        self._open: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()
        self._hashed: set[int] = set()
        self._records = self._check_shards()
        self._row_of_id = {sample_id: i for i, sample_id in enumerate(self._manifest.ids)}

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as a dict (``plan`` and ``info``; see docs/distill-format.md)."""
        return self._manifest.to_dict()

    @property
    def keys(self) -> list[str]:
        return list(self.tensors)

    @property
    def ids(self) -> list[str]:
        return list(self._manifest.ids)

    @property
    def views(self) -> int:
        return self._manifest.views

    def __len__(self) -> int:
        return self._manifest.rows

    def _check_shards(self) -> dict[int, dict]:
        checksums = self.verify is Verify.OPEN
        records, missing = scan_shards(self.path, self._manifest, range(self._manifest.shard_count), checksums=checksums, error=InputError)
        if checksums:
            self._hashed.update(records)
        if missing:
            shown = ", ".join(str(i) for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise InputError(
                f"{self.path}: export incomplete, {len(missing)} of {self._manifest.shard_count} shards missing ({shown}); "
                "run the same 'onnxcomp distill export' command again to finish it"
            )
        return records

    def _shard(self, index: int) -> dict[str, np.ndarray]:
        arrays = self._open.get(index)
        if arrays is not None:
            self._open.move_to_end(index)
            return arrays
        if self.verify is Verify.LAZY and index not in self._hashed:
            _, problem = check_shard(self.path, self._manifest, index, checksums=True)
            if problem:
                raise InputError(f"{self.path}: {problem}")
            self._hashed.add(index)
        arrays = {}
        start, stop = self._manifest.shard_rows(index)
        for key, tensor in self.tensors.items():
            path = shard_dir(self.path, index) / tensor.file
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: unreadable ({err})") from err
            if array.dtype != np.dtype(tensor.dtype) or array.shape != (stop - start, *tensor.shape):
                raise InputError(f"{path}: holds {array.dtype}{list(array.shape)}, the manifest says {tensor.dtype}{[stop - start, *tensor.shape]}")
            arrays[key] = array
        self._open[index] = arrays
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return arrays

    def _locate(self, row: int) -> tuple[int, int]:
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} out of range for {len(self)} rows")
        row %= len(self)
        per_shard = self._manifest.samples_per_shard * self.views
        return row // per_shard, row % per_shard

    def __getitem__(self, row: int) -> dict[str, np.ndarray]:
        """Row ``row`` of every stored tensor (read-only memory-mapped views)."""
        index, offset = self._locate(int(row))
        return {key: array[offset] for key, array in self._shard(index).items()}

    def row(self, sample_id: str, view: int = 0) -> int:
        """The row of view ``view`` of the sample with this id."""
        if sample_id not in self._row_of_id:
            raise KeyError(f"no sample with id {sample_id!r} in {self.path}")
        if not 0 <= view < self.views:
            raise IndexError(f"view {view} out of range ({self.views} per sample)")
        return self._row_of_id[sample_id] * self.views + view

    def by_id(self, sample_id: str, view: int = 0) -> dict[str, np.ndarray]:
        return self[self.row(sample_id, view)]

    def take(self, rows: Sequence[int] | np.ndarray, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The given rows of each tensor in ``keys`` (default all), in the order given, as new arrays."""
        keys = self._keys(keys)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        out = {k: np.empty((len(rows), *self.tensors[k].shape), dtype=self.tensors[k].dtype) for k in keys}
        per_shard = self._manifest.samples_per_shard * self.views
        shard_of = rows // per_shard
        for index in np.unique(shard_of):
            where = np.nonzero(shard_of == index)[0]
            offsets = rows[where] - index * per_shard
            arrays = self._shard(int(index))
            for key in keys:
                out[key][where] = arrays[key][offsets]
        return out

    def batches(
        self,
        batch_size: int,
        *,
        keys: Sequence[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``{"rows": row indices, key: array, ...}`` over all rows.

        With ``shuffle``, rows are permuted by ``numpy.random.default_rng(seed)``.
        """
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            if drop_last and len(rows) < batch_size:
                return
            yield {"rows": rows, **self.take(rows, keys)}

    def _keys(self, keys: Sequence[str] | None) -> list[str]:
        if keys is None:
            return list(self.tensors)
        unknown = [k for k in keys if k not in self.tensors]
        if unknown:
            raise KeyError(f"no stored tensor {', '.join(map(repr, unknown))}; stored: {', '.join(self.tensors)}")
        return list(keys)

    def check_teacher(self, teacher: Any) -> None:
        """Raises InputError unless ``teacher`` (file or ModelProto) is the model the export was made with."""
        sha = teacher_sha256(teacher)
        if sha != self._manifest.teacher_sha256:
            raise InputError(
                f"{self.path}: was exported from another teacher (sha256 {self._manifest.teacher_sha256[:12]}…, "
                f"this one is {sha[:12]}…)"
            )

    def check_data(self, data: Any, *, image_options: Any = None, limit: int | None = None) -> None:
        """Raises DataError unless ``data`` yields exactly the samples the export was made from.

        Image folders are read with the image options recorded in the
        manifest unless ``image_options`` is given.
        """
        specs = [InputSpec(s["name"], np.dtype(s["dtype"]), None if s["shape"] is None else tuple(s["shape"]))
                 for s in self._manifest.plan["teacher"]["inputs"]]
        recorded = self._manifest.plan["preprocessing"].get("image_options")
        if image_options is None and recorded:
            image_options = _image_options(recorded)
        dataset = open_data(data, specs, image_options=image_options, limit=limit)
        stream = iter_range(dataset, 0, self._manifest.samples + 1)
        for index in range(self._manifest.shard_count):
            start, stop = self._manifest.shard_samples(index)
            digest, seen = digest_samples(stream, stop - start)
            if seen < stop - start:
                raise DataError(f"{self.path}: the data has {start + seen} samples, the export {self._manifest.samples}")
            if digest != self._records[index]["inputs_sha256"]:
                raise DataError(f"{self.path}: samples {start}..{stop - 1} differ from the data the export was made from")
        if next(stream, None) is not None:
            raise DataError(f"{self.path}: the data has more samples than the export's {self._manifest.samples}")

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> TeacherOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TeacherOutputs({str(self.path)!r}, rows={len(self)}, keys={self.keys})"


def _image_options(recorded: dict[str, Any]):
    from ..data_images import ChannelOrder, ImageOptions, Layout, Resize

    values = dict(recorded)
    for key in ("size", "mean", "std"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    values["layout"] = Layout(values["layout"])
    values["channel_order"] = ChannelOrder(values["channel_order"])
    values["resize"] = Resize(values["resize"])
    return ImageOptions(**values)
