"""Splitting calibration data into a calibration part and held-out samples.

Mixed precision and the accuracy report judge the quantized model on samples
calibration did not see: every ``every``-th sample (up to ``limit`` of them)
is held out and kept in memory; the calibration part streams the others, so
its memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterator

from onnxcomp.data import Dataset, Feed


class _WithoutHeldOut(Dataset):
    def __init__(self, inner: Dataset, every: int, limit: int):
        self.inner, self.every, self.limit = inner, every, limit
        self.description = f"{inner.description} (without held-out samples)"

    def _held_out(self, index: int) -> bool:
        return index % self.every == self.every - 1 and index // self.every < self.limit

    def __iter__(self) -> Iterator[Feed]:
        for index, feed in enumerate(self.inner):
            if not self._held_out(index):
                yield feed

    def size(self) -> int | None:
        total = self.inner.size()
        if total is None:
            return None
        return total - min(total // self.every, self.limit)


def split_holdout(data: Dataset, every: int = 5, limit: int = 32) -> tuple[Dataset, list[Feed]]:
    """``(calibration part, held-out feeds)``: samples ``every-1, 2*every-1, ...`` (at most ``limit``) are held out.

    With fewer than ``every`` samples nothing is held out and the held-out
    list reuses the first samples (the caller should say the evaluation is
    then in-sample).
    """
    calibration = _WithoutHeldOut(data, every, limit)
    held_out = []
    for index, feed in enumerate(data):
        if index >= every * limit:
            break
        if calibration._held_out(index):
            held_out.append(feed)
    if not held_out:
        return data, [feed for _, feed in zip(range(limit), data)]
    return calibration, held_out
