"""Holding out part of the user's data so a run is judged on samples it never fitted.

When ``optimize`` gets calibration data and no separate verification data, one
sample in ``EVERY`` (at a seeded offset, at most ``limit`` of them) is held out:
the passes calibrate, sweep and refit on the rest, and the verification report
and the quality budget are computed on the held-out samples. Both parts stream
from the same source, so memory does not grow with the data.
"""

from __future__ import annotations

from collections.abc import Iterator

from .data import Dataset, Feed

EVERY = 5
"""One sample in this many is held out (20 %)."""

MIN_SAMPLES = 5
"""With fewer samples nothing is held out (verification is then in-sample)."""


class Part(Dataset):
    """The held-out or the fitting part of ``inner``."""

    def __init__(self, inner: Dataset, *, held_out: bool, offset: int, limit: int | None, every: int = EVERY):
        self.inner, self.held_out, self.offset, self.limit, self.every = inner, held_out, offset, limit, every
        what = f"held-out 1 in {every}" if held_out else f"without the held-out 1 in {every}"
        self.description = f"{inner.description} ({what})"

    def is_held_out(self, index: int) -> bool:
        if index % self.every != self.offset:
            return False
        return self.limit is None or index // self.every < self.limit

    def __iter__(self) -> Iterator[Feed]:
        for index, feed in enumerate(self.inner):
            if self.is_held_out(index) == self.held_out:
                yield feed
            elif self.held_out and self.limit is not None and index // self.every >= self.limit:
                return

    def size(self) -> int | None:
        total = self.inner.size()
        if total is None:
            return None
        held = len([i for i in range(self.offset, total, self.every) if self.is_held_out(i)])
        return held if self.held_out else total - held

    @property
    def passes(self) -> int:
        return getattr(self.inner, "passes", 0)


def count_samples(data: Dataset, at_most: int) -> int:
    """How many samples ``data`` has, reading at most ``at_most`` when its size is unknown."""
    size = data.size()
    if size is not None:
        return size
    count = 0
    for _ in data:
        count += 1
        if count >= at_most:
            break
    return count


def split(data: Dataset, *, seed: int = 0, limit: int | None = None) -> tuple[Dataset, Dataset] | None:
    """``(fitting part, held-out part)``, or None when ``data`` has fewer than ``MIN_SAMPLES`` samples.

    Args:
        limit: Hold out at most this many samples (the rest all fit).
    """
    if count_samples(data, MIN_SAMPLES) < MIN_SAMPLES:
        return None
    offset = seed % EVERY
    return Part(data, held_out=False, offset=offset, limit=limit), Part(data, held_out=True, offset=offset, limit=limit)
