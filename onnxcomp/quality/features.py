"""Per-feature error: a distance no output layout can hide damage in.

A whole-tensor distance (cosine, relative L2) is dominated by the largest
values. A detector's ``[1, 4+C, N]`` output holds box coordinates in pixels
beside class scores in 0..1, so losing every class score moves the tensor's
cosine by 1e-5. Here every output is cut along its *feature axis* and each
feature's error is measured against that feature's own scale:

    e_f = sqrt( sum (y'_f - y_f)^2 / max(sum y_f^2, floor^2) )

over all samples and all other positions, and an output's error is its worst
feature, ``max_f e_f``. The feature axis is the non-batch axis along which the
reference's per-index RMS varies most (box rows against score rows; a few
outlier hidden dims of a transformer); an axis whose size changes between
samples (sequence length, image width) is a position axis, never a feature
axis. Floors keep a feature that is always ~0 in the reference from turning
rounding noise into a huge ratio: a feature whose values all lie in [0, 1]
(a probability, a sigmoid score) is judged on a scale of at least 0.01; any
other on at least 1 % of the median RMS of the other such features (so box
coordinates never set the scale of class scores).

The same normalisation gives the *continuous* deviation the searches use
(pruning sensitivity, mixed precision): the mean over features of
``sum (y'_f - y_f)^2 / max(sum y_f^2, floor^2)``, so every feature weighs the
same whatever its units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

FLOOR_FRACTION = 0.01
"""A feature's scale is at least this fraction of the median RMS of the features not in [0, 1]."""

UNIT_FLOOR = 0.01
"""A feature whose reference values all lie in [0, 1] (a probability, a
sigmoid score) has an RMS scale of at least this: a class the original never
predicts (scores ~1e-9) is judged by absolute error, not by a ratio of noise."""


@dataclasses.dataclass
class FeatureError:
    """The per-feature error of one output.

    Attributes:
        output: The output name.
        axis: The feature axis (None: the output is compared whole).
        worst: ``max_f e_f`` (0 = identical; 1 = the error is as large as the feature).
        worst_index: The feature where it occurs.
        mean: The RMS over features of ``e_f``.
        features: How many features the axis has.
    """

    output: str
    axis: int | None
    worst: float
    worst_index: int | None
    mean: float
    features: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _AxisSums:
    """Per-index sums of squares, extremes and element count along one axis
    (dropped if the axis size varies)."""

    def __init__(self, size: int):
        self.reference = np.zeros(size)
        self.error = np.zeros(size)
        self.minimum = np.full(size, np.inf)
        self.maximum = np.full(size, -np.inf)
        self.count = 0  # elements per index
        self.valid = True

    def add(self, ref: np.ndarray, ref_sq: np.ndarray, err_sq: np.ndarray, axis: int | None) -> None:
        """Accumulate one sample (``axis`` None: the whole output as one feature)."""
        if ref.size == 0:
            return
        others = None if axis is None else _other_axes(ref.ndim, axis)
        self.reference += ref_sq.sum(axis=others)
        self.error += err_sq.sum(axis=others)
        self.minimum = np.minimum(self.minimum, ref.min(axis=others))
        self.maximum = np.maximum(self.maximum, ref.max(axis=others))
        self.count += ref.size if axis is None else ref.size // max(ref.shape[axis], 1)

    def scale(self) -> np.ndarray:
        """Each feature's reference energy, raised to the floors (see the module docstring)."""
        unit = (self.minimum >= 0) & (self.maximum <= 1)
        others = self.reference[~unit]
        median = float(np.median(others)) if others.size else 0.0
        floor = np.where(unit, UNIT_FLOOR**2 * self.count, max((FLOOR_FRACTION**2) * median, 1e-30))
        return np.maximum(self.reference, floor)


def _other_axes(rank: int, axis: int) -> tuple[int, ...]:
    return tuple(a for a in range(rank) if a != axis)


def candidate_axes(shape: Sequence[int]) -> list[int]:
    """Axes that may carry features (size > 1): the only axis of a vector; any
    non-batch axis of a rank-2 or rank-3 output; the channel axis (1) of an
    image-like output, whose other axes are positions (a segmentation map's
    pixels are not features)."""
    rank = len(shape)
    axes = [0] if rank == 1 else ([1] if rank >= 4 else list(range(1, rank)))
    return [a for a in axes if shape[a] > 1]


def choose_axis(per_axis: dict[int, np.ndarray]) -> int | None:
    """The axis whose per-index reference energy is most uneven (max over median)."""
    best, best_spread = None, 1.0
    for axis, sums in per_axis.items():
        median = float(np.median(sums))
        spread = float(sums.max()) / median if median > 0 else (np.inf if sums.max() > 0 else 1.0)
        if best is None or spread > best_spread:
            best, best_spread = axis, spread
    return best


class FeatureErrorAccumulator:
    """Streams (reference, candidate) pairs of one float output; memory is the sum of its axis sizes."""

    def __init__(self, name: str):
        self.name = name
        self._axes: dict[int, _AxisSums] | None = None
        self._whole = _AxisSums(1)

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        err = np.asarray(candidate, dtype=np.float64) - ref
        ref, err = np.nan_to_num(ref), np.nan_to_num(err)
        ref_sq, err_sq = ref * ref, err * err
        self._whole.add(ref, ref_sq, err_sq, None)
        if self._axes is None:
            self._axes = {a: _AxisSums(ref.shape[a]) for a in candidate_axes(ref.shape)}
        for axis, sums in self._axes.items():
            if not sums.valid:
                continue
            if axis >= ref.ndim or ref.shape[axis] != sums.reference.size:
                sums.valid = False  # a position axis (its size changes): not a feature axis
                continue
            sums.add(ref, ref_sq, err_sq, axis)

    def feature_axis(self) -> tuple[int | None, np.ndarray]:
        """``(axis, scale)``: the feature axis and each feature's floored reference
        energy (None and the whole output's energy when no axis qualifies)."""
        axes = {a: s for a, s in (self._axes or {}).items() if s.valid}
        axis = choose_axis({a: s.reference for a, s in axes.items()})
        if axis is None:
            return None, np.maximum(self._whole.scale(), 1e-30)
        return axis, axes[axis].scale()

    def result(self) -> FeatureError:
        axis, scale = self.feature_axis()
        if axis is None:
            err = float(self._whole.error[0])
            value = float(np.sqrt(err / scale[0])) if err > 0 else 0.0
            return FeatureError(self.name, None, value, None, value, 1)
        ratios = self._axes[axis].error / scale
        errors = np.sqrt(ratios)
        worst = int(np.argmax(errors))
        return FeatureError(self.name, axis, float(errors[worst]), worst, float(np.sqrt(ratios.mean())), int(errors.size))


class FeatureDeviation:
    """The continuous per-feature deviation of candidates against fixed reference outputs.

    Built once from the reference outputs of a few samples (the feature axes
    and scales are fixed then), it scores any number of candidates against
    them: ``mean over outputs and features of sum(err_f^2) / max(sum(ref_f^2), floor^2)``.
    """

    def __init__(self, references: Sequence[Sequence[np.ndarray]]):
        self._plans: list[tuple[int | None, np.ndarray] | None] = []
        if not references:
            return
        for k in range(len(references[0])):
            values = [np.asarray(sample[k]) for sample in references]
            if values[0].dtype.kind != "f":
                self._plans.append(None)
                continue
            acc = FeatureErrorAccumulator(str(k))
            for v in values:
                acc.add(v, v)
            self._plans.append(acc.feature_axis())

    def __call__(self, references: Sequence[Sequence[np.ndarray]], candidates: Sequence[Sequence[np.ndarray]]) -> float:
        total, count = 0.0, 0
        for k, plan in enumerate(self._plans):
            if plan is None:
                continue
            axis, scale = plan
            error = np.zeros_like(scale)
            for ref, cand in zip(references, candidates):
                diff = np.nan_to_num(np.asarray(cand[k], dtype=np.float64) - np.asarray(ref[k], dtype=np.float64), nan=1e6)
                error += (diff * diff).sum() if axis is None else (diff * diff).sum(axis=_other_axes(diff.ndim, axis))
            total += float((error / scale).mean())
            count += 1
        return total / count if count else 0.0
