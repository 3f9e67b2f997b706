"""Comparing an optimized model with its original on the same data.

Both models run in onnxruntime (full graph optimizations, as deployed) on every
sample; per output we keep running statistics only, so memory is flat in the
number of samples:

* ``max_abs`` / ``mean_abs``: absolute error over all elements;
* ``cosine`` (mean and min over samples) of the flattened per-sample outputs;
* ``top1_agreement`` for 2-D float outputs ``[batch, classes]`` (how often the
  arg-max class is the same);
* ``exact_match`` for integer and boolean outputs.

What the outputs *mean* (detections kept, characters read, the quality
budget) is measured alongside by :mod:`onnxcomp.quality` in the same runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .data import Dataset
from .errors import DataError, VerificationError
from .progress import ProgressFactory, null_progress
from .quality import Quality, QualityResult
from .runtime import OptLevel, create_session, run

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OutputComparison:
    name: str
    samples: int = 0
    elements: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0
    reference_max_abs: float = 0.0
    cosine_mean: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    exact_match: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Accumulator:
    def __init__(self, name: str):
        self.result = OutputComparison(name)
        self._sum_abs = 0.0
        self._cos_sum = 0.0
        self._cos_n = 0
        self._top1 = [0, 0]
        self._exact = [0, 0]

    def add(self, ref: np.ndarray, out: np.ndarray, where: str) -> None:
        r = self.result
        if ref.shape != out.shape:
            raise VerificationError(
                f"{where}: output '{r.name}' has shape {list(out.shape)}, the original gives {list(ref.shape)}"
            )
        r.samples += 1
        r.elements += ref.size
        if ref.dtype.kind in "fc":
            ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
            bad = ~np.isfinite(out64) & np.isfinite(ref64)
            if np.any(bad):
                raise VerificationError(f"{where}: output '{r.name}' has NaN/Inf where the original is finite")
            diff = np.abs(np.nan_to_num(ref64 - out64))
            if diff.size:
                r.max_abs = max(r.max_abs, float(diff.max()))
                r.reference_max_abs = max(r.reference_max_abs, float(np.abs(np.nan_to_num(ref64)).max()))
            self._sum_abs += float(diff.sum())
            a, b = ref64.reshape(-1), out64.reshape(-1)
            na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
            cos = 1.0 if na == 0 and nb == 0 else (float(a @ b) / (na * nb) if na and nb else 0.0)
            self._cos_sum += cos
            self._cos_n += 1
            r.cosine_min = cos if r.cosine_min is None else min(r.cosine_min, cos)
            if ref.ndim == 2 and ref.shape[1] > 1:
                self._top1[0] += int(np.sum(ref.argmax(axis=1) == out.argmax(axis=1)))
                self._top1[1] += ref.shape[0]
        else:
            self._exact[0] += int(np.sum(ref == out))
            self._exact[1] += ref.size
            mismatch = ref != out
            if ref.dtype.kind in "iu" and np.any(mismatch):
                r.max_abs = max(r.max_abs, float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max()))

    def finish(self) -> OutputComparison:
        r = self.result
        if r.elements and self._cos_n:
            r.mean_abs = self._sum_abs / r.elements
            r.cosine_mean = self._cos_sum / self._cos_n
        if self._top1[1]:
            r.top1_agreement = self._top1[0] / self._top1[1]
        if self._exact[1]:
            r.exact_match = self._exact[0] / self._exact[1]
        return r


@dataclasses.dataclass
class Comparison:
    """Per-output tensor statistics and, when a metric was given, what the outputs mean."""

    outputs: list[OutputComparison]
    quality: QualityResult | None = None


def compare_models(
    reference: onnx.ModelProto | bytes | str | os.PathLike,
    candidate: onnx.ModelProto | bytes | str | os.PathLike,
    data: Dataset,
    *,
    progress: ProgressFactory = null_progress,
    level: OptLevel = OptLevel.ALL,
    sequential: bool = False,
) -> list[OutputComparison]:
    """Run both models on ``data`` and compare every output of the reference
    (tensor statistics only; :func:`verify_models` adds the quality metric)."""
    return verify_models(reference, candidate, data, progress=progress, level=level, sequential=sequential, quality=None).outputs


def verify_models(
    reference: onnx.ModelProto | bytes | str | os.PathLike,
    candidate: onnx.ModelProto | bytes | str | os.PathLike,
    data: Dataset,
    *,
    quality: Callable[[list[str], list[np.ndarray]], Quality] | None,
    progress: ProgressFactory = null_progress,
    level: OptLevel = OptLevel.ALL,
    sequential: bool = False,
) -> Comparison:
    """Run both models on ``data``; compare every output, and measure quality.

    Args:
        quality: Builds the :class:`~onnxcomp.quality.Quality` from the output
            names and the reference's outputs on the first sample (so the
            metric can be detected from them); None measures tensors only.
        sequential: Run the reference over all samples first (its outputs
            spooled to a scratch folder), then the candidate, so only one
            model is in memory at a time (for large models).

    Raises:
        VerificationError: The candidate lacks an output, or gives a different
            shape, or non-finite values where the reference is finite.
        DataError: The reference model itself fails on a sample.
    """
    ref_session = create_session(reference, level=level)
    names = [o.name for o in ref_session.get_outputs()]
    if not sequential:
        cand_session = create_session(candidate, level=level)
        _check_outputs(names, cand_session)
        pairs = (
            (index, _run_reference(ref_session, names, feed, index), feed)
            for index, feed in enumerate(data)
        )
        return _accumulate(names, pairs, cand_session, data, progress, quality)
    with tempfile.TemporaryDirectory(prefix="onnxcomp-verify-") as spool:
        count = 0
        bar = progress(data.size(), "running original", "sample")
        for index, feed in enumerate(data):
            values = _run_reference(ref_session, names, feed, index)
            np.savez(Path(spool) / f"{index:08d}.npz", *values)
            count += 1
            bar.update(1)
        bar.close()
        del ref_session
        cand_session = create_session(candidate, level=level)
        _check_outputs(names, cand_session)

        def replay():
            for index, feed in enumerate(data):
                with np.load(Path(spool) / f"{index:08d}.npz") as stored:
                    yield index, [stored[f"arr_{i}"] for i in range(len(names))], feed

        return _accumulate(names, replay(), cand_session, data, progress, quality)


def _run_reference(session, names, feed, index: int) -> list[np.ndarray]:
    return run(session, names, feed, error=DataError, what=f"the original model on sample {index}")


def _check_outputs(names: list[str], session) -> None:
    available = {o.name for o in session.get_outputs()}
    missing = [n for n in names if n not in available]
    if missing:
        raise VerificationError(f"optimized model lacks output(s) {', '.join(missing)}")


def _accumulate(names, pairs, cand_session, data: Dataset, progress: ProgressFactory, quality) -> Comparison:
    accumulators = {n: _Accumulator(n) for n in names}
    meter = None
    bar = progress(data.size(), "verifying", "sample")
    try:
        for index, ref_values, feed in pairs:
            cand_values = run(cand_session, names, feed, error=VerificationError, what=f"the optimized model on sample {index}")
            for name, ref, out in zip(names, ref_values, cand_values):
                accumulators[name].add(np.asarray(ref), np.asarray(out), f"sample {index}")
            if quality is not None:
                if meter is None:
                    meter = quality(names, [np.asarray(v) for v in ref_values]).meter()
                meter.add(ref_values, cand_values, feed)
            bar.update(1)
    finally:
        bar.close()
    return Comparison([acc.finish() for acc in accumulators.values()], meter.result() if meter is not None else None)


def check_tolerances(
    comparisons: Sequence[OutputComparison], *, max_abs: float | None = None, min_cosine: float | None = None
) -> None:
    """Raise VerificationError if any output exceeds the given bounds."""
    for c in comparisons:
        if max_abs is not None and c.max_abs > max_abs:
            raise VerificationError(
                f"output '{c.name}' differs from the original by up to {c.max_abs:.3g} (allowed {max_abs:g})"
            )
        if min_cosine is not None and c.cosine_min is not None and c.cosine_min < min_cosine:
            raise VerificationError(
                f"output '{c.name}' has cosine similarity {c.cosine_min:.6f} on its worst sample "
                f"(required {min_cosine:g})"
            )


def check_loads(model: onnx.ModelProto | bytes | str) -> dict[str, str]:
    """Load ``model`` at every onnxruntime optimization level; level -> "ok" or the error."""
    results = {}
    for level in OptLevel:
        try:
            create_session(model, level=level)
            results[level.value] = "ok"
        except Exception as err:  # noqa: BLE001 - reported, caller decides
            results[level.value] = " ".join(str(err).split())[:300]
    return results


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
