"""Producing one shard: run the teacher over its samples and write it.

:class:`ShardProducer` is what every backend runs per shard: the local
exporter streams consecutive shards through it, the Ray backend calls it in
each worker. A shard's bytes depend only on the manifest and the data (batches
never cross a shard boundary, augmentation parameters are seeded per sample
and view), so resumed, split and Ray exports write identical shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Feed
from ..errors import DataError
from ..progress import ProgressBar
from .augment import CropFlip
from .config import ExportConfig
from .manifest import Manifest
from .runner import TeacherRunner
from .samples import check_single_row, update_digest
from .shards import write_shard
from .transforms import VIEW_KEY, StoredTensor, derive


class ShardProducer:
    """Writes shards of one export (see the module docstring)."""

    def __init__(self, runner: TeacherRunner, manifest: Manifest, config: ExportConfig, augment: CropFlip | None, out: Path):
        self.runner = runner
        self.manifest = manifest
        self.config = config
        self.augment = augment
        self.out = Path(out)
        self.tensors: list[StoredTensor] = manifest.tensors
        self.source_shapes = {name: tuple(info["shape"]) for name, info in manifest.plan["teacher_tensors"].items()}

    def row_id(self, row: int) -> str:
        views = self.manifest.views
        sample_id = self.manifest.ids[row // views]
        return sample_id if views == 1 else f"{sample_id}#view{row % views}"

    def export(self, index: int, samples: Iterator[Feed], bar: ProgressBar | None = None) -> dict[str, Any]:
        """Run the teacher on shard ``index``'s samples (an iterator positioned at its
        first sample; exactly its samples are consumed) and write the shard.

        Raises:
            DataError: The data does not fit, ends early, or the teacher's outputs
                are not storable. OutputError: writing failed.
        """
        start_sample, stop_sample = self.manifest.shard_samples(index)
        start_row, stop_row = self.manifest.shard_rows(index)
        buffers = {t.key: np.empty((stop_row - start_row, *t.shape), dtype=t.dtype) for t in self.tensors}
        digest = hashlib.sha256()
        batch: list[Feed] = []
        batch_start = start_row
        row = start_row
        for sample, feed in self._take(samples, start_sample, stop_sample):
            update_digest(digest, feed)
            for view in range(self.manifest.views):
                if self.augment is not None:
                    params = self.augment.params(feed, self.config.seed, sample, view)
                    buffers[VIEW_KEY][row - start_row] = params
                    batch.append(self.augment.apply(feed, params))
                else:
                    batch.append(feed)
                row += 1
                if len(batch) >= self.runner.batch_size:
                    self._flush(batch, batch_start, start_row, buffers, bar)
                    batch, batch_start = [], row
        if batch:
            self._flush(batch, batch_start, start_row, buffers, bar)
        return write_shard(self.out, self.manifest, index, buffers, digest.hexdigest())

    def inputs_digest(self, index: int, samples: Iterator[Feed]) -> str:
        """SHA-256 of shard ``index``'s samples, consumed from ``samples``."""
        digest = hashlib.sha256()
        for _, feed in self._take(samples, *self.manifest.shard_samples(index)):
            update_digest(digest, feed)
        return digest.hexdigest()

    def _take(self, samples: Iterator[Feed], start: int, stop: int) -> Iterator[tuple[int, Feed]]:
        for sample in range(start, stop):
            feed = next(samples, None)
            if feed is None:
                raise DataError(f"the data ended after {sample} samples; the export plans {self.manifest.samples} (did the data change?)")
            check_single_row(feed, sample)
            yield sample, feed

    def _flush(self, batch: Sequence[Feed], first_row: int, shard_start: int, buffers: dict[str, np.ndarray], bar: ProgressBar | None) -> None:
        outputs = self.runner.run(batch, first_row)
        ids = [self.row_id(r) for r in range(first_row, first_row + len(batch))]
        stored = derive(self.tensors, outputs, self.config, source_shapes=self.source_shapes, first_row=first_row, ids=ids)
        offset = first_row - shard_start
        for key, value in stored.items():
            buffers[key][offset:offset + len(batch)] = value
        if bar is not None:
            bar.update(len(batch))
