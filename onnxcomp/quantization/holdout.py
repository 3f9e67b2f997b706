"""Splitting calibration data into a calibration part and held-out samples.

Mixed precision and the accuracy report judge the quantized model on samples
calibration did not see: every ``every``-th sample (up to ``limit`` of them)
is held out and kept in memory; the calibration part streams the others, so
its memory stays flat. The split itself is :class:`onnxcomp.holdout.Part`, the
one :func:`onnxcomp.optimize` uses for its verification samples.
"""

from __future__ import annotations

from onnxcomp.data import Dataset, Feed
from onnxcomp.holdout import Part


def split_holdout(data: Dataset, every: int = 5, limit: int = 32) -> tuple[Dataset, list[Feed]]:
    """``(calibration part, held-out feeds)``: samples ``every-1, 2*every-1, ...`` (at most ``limit``) are held out.

    With fewer than ``every`` samples nothing is held out and the held-out
    list reuses the first samples (the caller should say the evaluation is
    then in-sample).
    """
    held_out = list(Part(data, held_out=True, offset=every - 1, limit=limit, every=every))
    if not held_out:
        return data, [feed for _, feed in zip(range(limit), data)]
    return Part(data, held_out=False, offset=every - 1, limit=limit, every=every), held_out
