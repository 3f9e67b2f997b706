"""Streaming activation statistics and the ranges calibration methods derive from them.

One pass over the calibration data fills, per observed tensor, everything
every method needs, in memory independent of the number of samples:

* the running minimum and maximum;
* exponential moving averages of the per-sample minimum and maximum
  (``m <- m + c * (x - m)``, ``c = 0.01``, as TensorFlow's and NNCF's
  moving-average observers);
* a histogram on a grid of equal bins aligned at multiples of the bin width
  ``w`` (bin ``i`` covers ``[i*w, (i+1)*w)``), of which a window of ``B``
  consecutive bins is stored. When a sample falls outside the window, the
  width doubles (bins ``2j`` and ``2j+1`` merge into ``j``, which is exact on
  an aligned grid) until the data fits, so the histogram never needs a second
  pass and never redistributes counts approximately;
* optionally, per-channel sums (channel means, for bias correction).

Methods (:class:`RangeMethod`) turn these into a range ``[lo, hi]``:

* ``minmax``: the extremes; ``moving-average``: the averaged extremes;
* ``percentile``: the ``p`` and ``100 - p`` percentiles of the histogram;
* ``entropy``: the clipping threshold minimizing KL(P || Q) between the
  distribution of ``|x|`` clipped at the threshold and its quantized version
  (the TensorRT calibration algorithm), evaluated on ``levels`` quantization
  levels per side;
* ``mse``: the range minimizing the expected squared error of quantize-
  dequantize over the histogram (clipping error plus rounding error), found by
  a coarse-to-fine search over shrink factors of each end.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .qparams import QuantType

DEFAULT_BINS = 4096
EMA_FACTOR = 0.01


class RangeMethod(enum.Enum):
    """How a tensor's quantization range is chosen from its statistics."""

    MINMAX = "minmax"
    MOVING_AVERAGE = "moving-average"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


@dataclasses.dataclass
class Statistics:
    """Calibration statistics of ``T`` tensors (arrays indexed like ``names``).

    Attributes:
        names: Observed tensor names.
        samples: Number of samples (feeds) seen.
        minimum, maximum: Running extremes, float64 ``[T]``.
        ema_min, ema_max: Moving averages of the per-sample extremes.
        counts: Histogram counts ``[T, B]`` (float64).
        width: Bin width per tensor ``[T]`` (0 for a tensor never seen).
        start: Grid index of each tensor's first stored bin ``[T]`` (int64).
        channel_sums: Tensor name -> per-channel sums (float64).
        channel_counts: Tensor name -> elements summed per channel.
        meta: Free-form provenance (model fingerprint, options).
    """

    names: list[str]
    samples: int
    minimum: np.ndarray
    maximum: np.ndarray
    ema_min: np.ndarray
    ema_max: np.ndarray
    counts: np.ndarray
    width: np.ndarray
    start: np.ndarray
    channel_sums: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    channel_counts: dict[str, float] = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def has(self, name: str) -> bool:
        return name in self._positions

    def index(self, name: str) -> int:
        """Position of tensor ``name`` (KeyError if it was not observed)."""
        return self._positions[name]

    def channel_mean(self, name: str) -> np.ndarray | None:
        if name not in self.channel_sums or not self.channel_counts.get(name):
            return None
        return self.channel_sums[name] / self.channel_counts[name]

    def histogram(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Bin centers and counts of tensor ``index`` (non-empty bins only)."""
        counts = self.counts[index]
        nonzero = np.flatnonzero(counts)
        centers = (self.start[index] + nonzero + 0.5) * self.width[index]
        return centers, counts[nonzero]

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to an ``.npz`` (no pickles), atomically; see :meth:`load`."""
        channel_names = sorted(self.channel_sums)
        header = {
            "format": "onnxcomp-calibration-statistics",
            "version": 1,
            "samples": self.samples,
            "meta": self.meta,
            "channel_names": channel_names,
            "channel_counts": [self.channel_counts[n] for n in channel_names],
        }
        lengths = [self.channel_sums[n].size for n in channel_names]
        sums = np.concatenate([self.channel_sums[n] for n in channel_names]) if channel_names else np.zeros(0)
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                self._write(handle, header, lengths, sums)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def _write(self, handle, header: dict, lengths: list[int], sums: np.ndarray) -> None:
        np.savez_compressed(
            handle,
            header=np.array(json.dumps(header)),
            names=np.array(self.names, dtype=str),
            minimum=self.minimum,
            maximum=self.maximum,
            ema_min=self.ema_min,
            ema_max=self.ema_max,
            counts=self.counts,
            width=self.width,
            start=self.start,
            channel_lengths=np.asarray(lengths, dtype=np.int64),
            channel_sums=sums,
        )

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        """Read statistics written by :meth:`save`.

        Raises:
            ValueError: The file is not a statistics file of this version.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {k: data[k] for k in data.files}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"not an onnxcomp calibration statistics file ({' '.join(str(err).split())[:120]})") from err
        if header.get("format") != "onnxcomp-calibration-statistics" or header.get("version") != 1:
            raise ValueError("not an onnxcomp calibration statistics file (version 1)")
        offsets = np.concatenate([[0], np.cumsum(arrays["channel_lengths"])])
        channel_names = header["channel_names"]
        sums = {n: arrays["channel_sums"][offsets[i]:offsets[i + 1]] for i, n in enumerate(channel_names)}
        return cls(
            names=[str(n) for n in arrays["names"]],
            samples=int(header["samples"]),
            minimum=arrays["minimum"],
            maximum=arrays["maximum"],
            ema_min=arrays["ema_min"],
            ema_max=arrays["ema_max"],
            counts=arrays["counts"],
            width=arrays["width"],
            start=arrays["start"],
            channel_sums=sums,
            channel_counts=dict(zip(channel_names, header["channel_counts"])),
            meta=header.get("meta", {}),
        )


class Accumulator:
    """Folds per-sample reductions of ``T`` tensors into :class:`Statistics`.

    Each :meth:`update` takes, per tensor, the sample's exact minimum and
    maximum and a subsample of its values for the histogram; all tensors are
    binned in one vectorized ``bincount``.
    """

    def __init__(self, names: Sequence[str], bins: int = DEFAULT_BINS, ema: float = EMA_FACTOR):
        count = len(names)
        self.names = list(names)
        self.bins = int(bins)
        self.ema = float(ema)
        self.samples = 0
        self.minimum = np.full(count, np.inf)
        self.maximum = np.full(count, -np.inf)
        self.ema_min = np.zeros(count)
        self.ema_max = np.zeros(count)
        self.counts = np.zeros((count, self.bins))
        self.width = np.zeros(count)
        self.start = np.zeros(count, dtype=np.int64)
        self.channel_sums: dict[str, np.ndarray] = {}
        self.channel_counts: dict[str, float] = {}

    def update(self, minimum: np.ndarray, maximum: np.ndarray, values: Sequence[np.ndarray]) -> None:
        """Add one sample: per-tensor extremes ``[T]`` and value subsamples (1-D each)."""
        minimum = np.asarray(minimum, dtype=np.float64)
        maximum = np.asarray(maximum, dtype=np.float64)
        if self.samples == 0:
            self.ema_min, self.ema_max = minimum.copy(), maximum.copy()
        else:
            self.ema_min += self.ema * (minimum - self.ema_min)
            self.ema_max += self.ema * (maximum - self.ema_max)
        np.minimum(self.minimum, minimum, out=self.minimum)
        np.maximum(self.maximum, maximum, out=self.maximum)
        self.samples += 1
        self._fit_windows()
        self._bin(values)

    def add_channel_sums(self, name: str, sums: np.ndarray, count: float) -> None:
        sums = np.asarray(sums, dtype=np.float64).reshape(-1)
        if name in self.channel_sums and self.channel_sums[name].shape == sums.shape:
            self.channel_sums[name] += sums
            self.channel_counts[name] += count
        else:
            self.channel_sums[name] = sums.copy()
            self.channel_counts[name] = float(count)

    def _fit_windows(self) -> None:
        """Initialize or widen every histogram window that does not cover [minimum, maximum]."""
        fresh = self.width == 0
        safe = np.where(fresh, 1.0, self.width)
        low = np.floor(self.minimum / safe)
        high = np.floor(self.maximum / safe)
        outside = fresh | (low < self.start) | (high >= self.start + self.bins)
        for t in np.flatnonzero(outside):
            if fresh[t]:
                self._init_window(t)
            else:
                self._widen(t)

    def _init_window(self, t: int) -> None:
        """A window whose data span is 3/4 of the bins (room to grow before re-binning);
        it starts at 0 for non-negative data."""
        lo, hi = self.minimum[t], self.maximum[t]
        span = hi if lo >= 0 else hi - lo
        if not span > 0:
            span = max(abs(hi), abs(lo), 1e-12)
        width = span / (0.75 * self.bins)
        self.width[t] = width
        self.start[t] = 0 if lo >= 0 else int(math.floor(lo / width)) - self.bins // 8

    def _widen(self, t: int) -> None:
        width, start = self.width[t], int(self.start[t])
        doublings = 0
        nonnegative = self.minimum[t] >= 0
        while True:
            low = 0 if nonnegative else math.floor(self.minimum[t] / width)
            high = math.floor(self.maximum[t] / width)
            if high - low + 1 <= int(0.75 * self.bins):
                break
            width *= 2.0
            doublings += 1
        new_start = 0 if nonnegative else low - (self.bins - (high - low + 1)) // 2
        old = self.counts[t]
        nonzero = np.flatnonzero(old)
        new = np.zeros(self.bins)
        if nonzero.size:
            moved = ((start + nonzero) >> doublings) - new_start
            np.add.at(new, np.clip(moved, 0, self.bins - 1), old[nonzero])
        self.counts[t] = new
        self.width[t] = width
        self.start[t] = new_start

    def _bin(self, values: Sequence[np.ndarray]) -> None:
        lengths = np.fromiter((v.size for v in values), dtype=np.int64, count=len(values))
        if not lengths.sum():
            return
        flat = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])
        ids = np.repeat(np.arange(len(values)), lengths)
        index = np.floor(flat / self.width[ids]).astype(np.int64) - self.start[ids]
        np.clip(index, 0, self.bins - 1, out=index)
        index += ids * self.bins
        self.counts += np.bincount(index, minlength=self.counts.size).reshape(self.counts.shape)

    def result(self, meta: dict | None = None) -> Statistics:
        return Statistics(
            names=list(self.names),
            samples=self.samples,
            minimum=self.minimum.copy(),
            maximum=self.maximum.copy(),
            ema_min=self.ema_min.copy(),
            ema_max=self.ema_max.copy(),
            counts=self.counts.copy(),
            width=self.width.copy(),
            start=self.start.copy(),
            channel_sums={k: v.copy() for k, v in self.channel_sums.items()},
            channel_counts=dict(self.channel_counts),
            meta=dict(meta or {}),
        )


# -- ranges ------------------------------------------------------------------------------


def _quantile(centers: np.ndarray, counts: np.ndarray, width: float, q: float) -> float:
    """The ``q``-quantile (0..1) of a histogram, interpolated inside the bin."""
    cumulative = np.cumsum(counts)
    target = q * cumulative[-1]
    i = int(np.searchsorted(cumulative, target, side="left"))
    i = min(i, counts.size - 1)
    before = cumulative[i - 1] if i > 0 else 0.0
    fraction = (target - before) / counts[i] if counts[i] > 0 else 0.5
    return float(centers[i] - 0.5 * width + fraction * width)


def _percentile_range(stats: Statistics, t: int, percentile: float) -> tuple[float, float]:
    centers, counts = stats.histogram(t)
    lo, hi = stats.minimum[t], stats.maximum[t]
    if counts.size == 0:
        return lo, hi
    width = stats.width[t]
    q = percentile / 100.0
    new_hi = min(hi, _quantile(centers, counts, width, q))
    new_lo = max(lo, _quantile(centers, counts, width, 1.0 - q)) if lo < 0 else lo
    return new_lo, new_hi


def quantization_error(
    centers: np.ndarray, counts: np.ndarray, lows: np.ndarray, highs: np.ndarray, qtype: QuantType, symmetric: bool
) -> np.ndarray:
    """Expected squared quantize-dequantize error of a histogram for each candidate range."""
    levels = qtype.qmax - qtype.qmin
    lows = np.minimum(lows, 0.0)[:, None]
    highs = np.maximum(highs, 0.0)[:, None]
    if symmetric:
        bound = np.maximum(-lows, highs)
        scale = np.maximum(bound / (levels / 2.0), 1e-30)
        zero = np.zeros_like(scale) if qtype.signed else np.full_like(scale, (qtype.qmax + qtype.qmin + 1) // 2)
    else:
        scale = np.maximum((highs - lows) / levels, 1e-30)
        zero = np.clip(np.round(qtype.qmin - lows / scale), qtype.qmin, qtype.qmax)
    q = np.clip(np.rint(centers[None, :] / scale) + zero, qtype.qmin, qtype.qmax)
    error = centers[None, :] - (q - zero) * scale
    return (error * error) @ counts


def _mse_range(stats: Statistics, t: int, qtype: QuantType, symmetric: bool) -> tuple[float, float]:
    centers, counts = stats.histogram(t)
    lo, hi = min(stats.minimum[t], 0.0), max(stats.maximum[t], 0.0)
    if counts.size == 0 or hi - lo <= 0:
        return stats.minimum[t], stats.maximum[t]
    coarse = np.exp(np.linspace(np.log(0.01), 0.0, 100))

    def best_factor(lows_of, highs_of) -> float:
        """Coarse search of a shrink factor in [0.01, 1], then a +-5 % refinement around the best."""
        best = 1.0
        for factors in (coarse, None):
            if factors is None:
                factors = np.clip(best * np.exp(np.linspace(-0.05, 0.05, 21)), 0.0, 1.0)
            errors = quantization_error(centers, counts, lows_of(factors), highs_of(factors), qtype, symmetric)
            best = float(factors[int(np.argmin(errors))])
        return best

    f = best_factor(lambda f: lo * f, lambda f: hi * f)
    best_lo, best_hi = lo * f, hi * f
    if lo < 0 < hi and not symmetric:
        for _ in range(2):  # coordinate descent: each end with the other fixed
            fixed_hi = best_hi
            best_lo = lo * best_factor(lambda g: lo * g, lambda g: np.full_like(g, fixed_hi))
            fixed_lo = best_lo
            best_hi = hi * best_factor(lambda h: np.full_like(h, fixed_lo), lambda h: hi * h)
    return float(best_lo), float(best_hi)


def _abs_histogram(stats: Statistics, t: int) -> np.ndarray:
    """Counts of ``|x|`` on the grid bins ``[j*w, (j+1)*w)``, j = 0..."""
    counts = stats.counts[t]
    index = stats.start[t] + np.arange(counts.size)
    folded = np.where(index >= 0, index, -index - 1)
    size = int(folded.max()) + 1 if counts.size else 0
    return np.bincount(folded, weights=counts, minlength=size)


def _kl_divergence(hist: np.ndarray, length: int, levels: int) -> float:
    """KL(P || Q): P is ``hist[:length]`` with the tail added to its last bin, Q its
    quantization to ``levels`` buckets (mass spread over each bucket's non-empty bins)."""
    p = hist[:length].copy()
    p[-1] += hist[length:].sum()
    edges = np.linspace(0, length, levels + 1).astype(np.int64)
    sources = hist[:length]
    nonempty = (sources > 0).astype(np.float64)
    bucket_mass = np.add.reduceat(sources, edges[:-1])
    bucket_bins = np.add.reduceat(nonempty, edges[:-1])
    bucket = np.repeat(np.arange(levels), np.diff(edges))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(nonempty > 0, bucket_mass[bucket] / np.maximum(bucket_bins[bucket], 1), 0.0)
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum <= 0 or q_sum <= 0:
        return float("inf")
    p, q = p / p_sum, q / q_sum
    mask = p > 0
    q = np.where(q > 0, q, 1e-10)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _entropy_range(stats: Statistics, t: int, qtype: QuantType) -> tuple[float, float]:
    lo, hi = stats.minimum[t], stats.maximum[t]
    hist = _abs_histogram(stats, t)
    if hist.size > 1 and hist[0] > 10 * hist[1]:
        # A spike at 0 (Relu outputs) is represented exactly by the zero point whatever the
        # threshold; left in, every wider bucket dilutes it in Q and the divergence favours
        # ever smaller thresholds. It is flattened to its neighbour's level.
        hist = hist.copy()
        hist[0] = hist[1]
    width = stats.width[t]
    signed = lo < 0
    levels = (qtype.qmax - qtype.qmin + 1) // (2 if signed else 1)
    nbins = hist.size
    if nbins <= levels or hist.sum() == 0:
        return lo, hi
    stride = max(1, (nbins - levels) // 256)
    candidates = np.arange(levels, nbins + 1, stride)
    divergences = [_kl_divergence(hist, int(i), levels) for i in candidates]
    best = int(candidates[int(np.argmin(divergences))])
    if stride > 1:
        fine = np.arange(max(levels, best - stride), min(nbins, best + stride) + 1)
        best = int(fine[int(np.argmin([_kl_divergence(hist, int(i), levels) for i in fine]))])
    threshold = best * width
    return (max(lo, -threshold) if signed else lo), min(hi, threshold)


def tensor_range(
    stats: Statistics,
    index: int,
    method: RangeMethod,
    *,
    qtype: QuantType = QuantType.UINT8,
    symmetric: bool = False,
    percentile: float = 99.99,
) -> tuple[float, float]:
    """The calibrated range of tensor ``index`` by ``method``."""
    if stats.width[index] == 0:
        return 0.0, 0.0
    if method is RangeMethod.MINMAX:
        return float(stats.minimum[index]), float(stats.maximum[index])
    if method is RangeMethod.MOVING_AVERAGE:
        return float(stats.ema_min[index]), float(stats.ema_max[index])
    if method is RangeMethod.PERCENTILE:
        return _percentile_range(stats, index, percentile)
    if method is RangeMethod.ENTROPY:
        return _entropy_range(stats, index, qtype)
    return _mse_range(stats, index, qtype, symmetric)
