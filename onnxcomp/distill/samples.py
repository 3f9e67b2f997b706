"""Sample-level access to onnxcomp datasets: ids, ranges, digests, views.

A distillation export addresses data by sample index: shards cover index
ranges, ``--shard i/n`` and the Ray backend start in the middle of the data,
and the manifest names every sample. :class:`onnxcomp.data.Dataset` only
offers iteration, so this module adds what the export needs on top of it:

* :func:`sample_ids` -- one id per sample: file names for folder sources,
  else the index as a string;
* :func:`iter_range` -- samples ``start .. stop-1``; folder sources (arrays
  or images) skip the files before ``start`` without reading them, others
  iterate and discard them without validating them;
* :func:`digest_samples` -- a SHA-256 over the samples' names, dtypes, shapes
  and bytes, stored per shard to catch data that changed between runs.

Folder datasets keep their sorted file list in ``_files``; this module is the
one place that relies on it (covered by the tests).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Iterator

import numpy as np

from ..data import Dataset, Feed, ValidatedDataset, validate_sample
from ..errors import DataError


def _file_list(dataset: Dataset) -> list | None:
    files = getattr(dataset, "_files", None)
    return list(files) if isinstance(files, list) else None


def count_samples(dataset: Dataset) -> int:
    """Number of samples, iterating once only when the source does not know it."""
    size = dataset.size()
    if size is not None:
        return size
    return sum(1 for _ in dataset)


def sample_ids(dataset: Dataset, count: int) -> list[str]:
    """One id per sample: file names (folder sources) or ``"0"``, ``"1"``, ..."""
    inner = dataset.inner if isinstance(dataset, ValidatedDataset) else dataset
    files = _file_list(inner)
    if files is not None and len(files) >= count:
        return [f.name for f in files[:count]]
    return [str(i) for i in range(count)]


def iter_range(dataset: Dataset, start: int, stop: int) -> Iterator[Feed]:
    """Samples ``start`` to ``stop - 1`` of ``dataset``, validated as usual."""
    if isinstance(dataset, ValidatedDataset):
        inner = dataset.inner
        files = _file_list(inner)
        if files is not None:
            view = copy.copy(inner)
            view._files = files[start:stop]
            source = iter(view)
        else:  # skipped samples are read but not validated
            source = itertools.islice(iter(inner), start, stop)
        for index, sample in enumerate(source, start):
            yield validate_sample(sample, dataset.specs, f"{dataset.description}: sample {index}")
        return
    yield from itertools.islice(iter(dataset), start, stop)


def update_digest(digest, feed: Feed) -> None:
    """Add one feed to a running hashlib digest (input names sorted; dtype, shape and bytes of each)."""
    for name in sorted(feed):
        arr = np.asarray(feed[name], order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        digest.update(name.encode())
        digest.update(arr.dtype.str.encode())
        digest.update(repr(arr.shape).encode())
        digest.update(arr.tobytes())


def check_single_row(feed: Feed, index: int) -> None:
    """Every input of a sample must have a leading batch axis of 1.

    Raises:
        DataError: A feed that holds a batch of several samples; the export
            stores one row per sample, so such data must be split first.
    """
    for name, arr in feed.items():
        if arr.ndim == 0 or arr.shape[0] != 1:
            raise DataError(
                f"sample {index}: input '{name}' has shape {list(arr.shape)}; distillation export stores one "
                "row per sample, so each sample needs a leading batch axis of 1 (stack samples on axis 0 "
                "of an .npz, or give one file per sample)"
            )


def digest_samples(samples: Iterator[Feed], count: int) -> tuple[str, int]:
    """SHA-256 of the next ``count`` samples of ``samples`` and how many there were."""
    digest = hashlib.sha256()
    seen = 0
    for feed in itertools.islice(samples, count):
        update_digest(digest, feed)
        seen += 1
    return digest.hexdigest(), seen
