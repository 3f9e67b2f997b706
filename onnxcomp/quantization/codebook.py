"""Non-uniform weight quantization for storage: codebooks of 16 or 256 levels.

A weight is stored as small integer indices into a codebook (per tensor, or
one codebook per output channel = axis 0) and decoded by standard ONNX ops
whose inputs are all constants, so onnxruntime's constant folding rebuilds the
float weight once, at session load (ORT_ENABLE_BASIC and above): inference
runs the original float kernels at the original speed. It is a file-size
feature, not a speed or memory feature.

Decoder (the cheapest standard formulation found that folds; opset 11+),
for ``C`` rows (channels along axis 0, or 1 for the whole tensor)::

    256 levels: idx = Cast<int64>(Iq)                       # Iq uint8 [C, M]
    16 levels:  hi  = BitShift(P, 4, RIGHT)                  # P uint8 [C, ceil(M/2)]
                lo  = BitShift(BitShift(P, 4, LEFT), 4, RIGHT)
                idx = Cast<int64>(Concat(lo, hi, axis=1))    # first half low nibbles, then high
                      (Slice back to M when M is odd)
    W = GatherElements(codebook[C, L], idx, axis=1)   # a codebook per row, or
    W = Gather(codebook[L], idx)                        # one shared codebook
    W = Reshape(W [* scale[C, 1]], shape)               # per-row scale (channel-scaled)

Levels are either fitted by 1-D k-means (Lloyd's algorithm, minimizing squared
error, initialized at quantiles) or fixed powers of two times a scale
(``0, ±s, ±s/2, ±s/4, ...``, with ``s = max|w|``) — a shift-only grid.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.graph import Namer, add_constant

logger = logging.getLogger(__name__)

KMEANS_ITERATIONS = 50
KMEANS_SAMPLE = 1 << 20
"""Tensors with more values fit their k-means on a seeded random sample of this many (assignment uses all)."""


class Levels(enum.Enum):
    """How codebook values are chosen."""

    KMEANS = "kmeans"
    POWER_OF_TWO = "power-of-two"


class Granularity(enum.Enum):
    """What shares a codebook (channels are slices along axis 0).

    ``tensor``: one codebook. ``channel-scaled``: one codebook for the values
    divided by their channel's max |w|, times a per-channel scale (folded BN
    makes channel ranges differ by orders of magnitude; this costs one float
    per channel). ``channel``: one codebook per channel (costs ``L`` floats per
    channel; for channels much longer than the codebook).
    """

    AUTO = "auto"
    TENSOR = "tensor"
    CHANNEL_SCALED = "channel-scaled"
    CHANNEL = "channel"


def kmeans_1d(values: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` sorted centroids minimizing the squared error of ``values``.

    Lloyd's algorithm in 1-D (values sorted once; each step is a searchsorted
    and a segment sum), from two starts, keeping the better: half quantiles and
    half a uniform grid over [min, max] (weight tensors have rare large values
    that quantile starts leave without a level), and the Panter-Dite
    companding start (quantiles of density^(1/3), the high-resolution optimum).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size > KMEANS_SAMPLE:
        values = np.random.default_rng(seed).choice(values, KMEANS_SAMPLE, replace=False)
    values = np.sort(values)
    if values.size == 0 or values[0] == values[-1]:
        return np.full(count, values[0] if values.size else 0.0)
    best, best_error = None, np.inf
    for start in (_mixed_start(values, count), _companding_start(values, count)):
        centroids, error = _lloyd(values, start)
        if error < best_error:
            best, best_error = centroids, error
    return best


def _mixed_start(values: np.ndarray, count: int) -> np.ndarray:
    half = count // 2
    quantiles = np.quantile(values, (np.arange(half) + 0.5) / half)
    return np.sort(np.concatenate([quantiles, np.linspace(values[0], values[-1], count - half)]))


def _companding_start(values: np.ndarray, count: int) -> np.ndarray:
    density, edges = np.histogram(values, bins=4096)
    cdf = np.cumsum(np.cbrt(density.astype(np.float64)))
    return np.interp((np.arange(count) + 0.5) / count, cdf / cdf[-1], edges[1:])


def _lloyd(values: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, float]:
    """Lloyd iterations on sorted ``values``; returns sorted centroids and their squared error."""
    centroids = np.sort(centroids)
    for _ in range(KMEANS_ITERATIONS):
        edges = np.searchsorted(values, (centroids[1:] + centroids[:-1]) / 2.0)
        bounds = np.concatenate([[0], edges, [values.size]])
        counts = np.diff(bounds)
        sums = np.add.reduceat(values, np.minimum(bounds[:-1], values.size - 1))
        updated = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    decoded = centroids[np.searchsorted((centroids[1:] + centroids[:-1]) / 2.0, values)]
    return centroids, float(np.sum((values - decoded) ** 2))


def power_of_two_levels(values: np.ndarray, count: int) -> np.ndarray:
    """``0`` and ``±s / 2^j`` for ``j = 0 .. count/2 - 2`` (the spare slot repeats ``s``).

    The scale ``s`` is searched on a grid of quarter octaves below ``max|w|``
    for the least squared error: with outliers, ``s = max|w|`` would spend the
    few levels far from where the weights are.
    """
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size > KMEANS_SAMPLE:
        flat = np.random.default_rng(0).choice(flat, KMEANS_SAMPLE, replace=False)
    peak = float(np.abs(flat).max(initial=0.0)) or 1.0

    def grid(scale: float) -> np.ndarray:
        magnitudes = scale / 2.0 ** np.arange(count // 2 - 1)
        levels = np.concatenate([-magnitudes, [0.0], magnitudes[::-1], [scale] * (count - 2 * magnitudes.size - 1)])
        return np.sort(levels)

    def error(levels: np.ndarray) -> float:
        decoded = levels[np.searchsorted((levels[1:] + levels[:-1]) / 2.0, flat)]
        return float(np.sum((flat - decoded) ** 2))

    return min((grid(peak * 2.0 ** (-k / 4.0)) for k in range(33)), key=error)


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (``centroids`` sorted) for every value."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values).astype(np.uint8)


@dataclasses.dataclass
class CodebookWeight:
    """A weight as ``codebook[c, indices[c, m]] * scale[c]``, reshaped to ``shape``.

    Attributes:
        indices: uint8 ``[C, M]`` (C = 1 for one codebook over the whole tensor).
        codebook: float32 ``[C, L]``, or ``[1, L]`` shared by all C rows.
        scale: float32 ``[C]`` per-row scale, or None.
        shape: The original weight shape.
    """

    indices: np.ndarray
    codebook: np.ndarray
    scale: np.ndarray | None
    shape: tuple[int, ...]

    def decoded(self) -> np.ndarray:
        idx = self.indices.astype(np.int64)
        rows = self.codebook[0][idx] if self.codebook.shape[0] != idx.shape[0] else np.take_along_axis(self.codebook, idx, axis=1)
        if self.scale is not None:
            rows = rows * self.scale[:, None]
        return rows.astype(np.float32).reshape(self.shape)


def encode(weight: np.ndarray, *, levels: int, method: Levels, granularity: Granularity, seed: int = 0) -> CodebookWeight:
    """Codebook-quantize ``weight`` (see :class:`Granularity`)."""
    if granularity is Granularity.AUTO:
        candidates = [encode(weight, levels=levels, method=method, granularity=g, seed=seed) for g in (Granularity.TENSOR, Granularity.CHANNEL_SCALED)]
        return min(candidates, key=lambda c: float(np.sum((c.decoded().astype(np.float64) - weight) ** 2)))
    fit = (lambda v: kmeans_1d(v, levels, seed=seed)) if method is Levels.KMEANS else (lambda v: power_of_two_levels(v, levels))
    if granularity is Granularity.TENSOR or weight.ndim < 2:
        rows = weight.reshape(1, -1)
        centroids = fit(rows)
        return CodebookWeight(assign(rows, centroids), centroids[None, :].astype(np.float32), None, tuple(weight.shape))
    rows = weight.reshape(weight.shape[0], -1).astype(np.float32)
    if granularity is Granularity.CHANNEL_SCALED:
        scale = np.abs(rows).max(axis=1)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        normalized = rows / scale[:, None]
        centroids = fit(normalized)
        return CodebookWeight(assign(normalized, centroids), centroids[None, :].astype(np.float32), scale, tuple(weight.shape))
    codebooks = np.empty((rows.shape[0], levels), np.float32)
    indices = np.empty(rows.shape, np.uint8)
    for c, row in enumerate(rows):
        codebooks[c] = fit(row)
        indices[c] = assign(row, codebooks[c])
    return CodebookWeight(indices, codebooks, None, tuple(weight.shape))


def add_decoder(graph: gs.Graph, namer: Namer, base: str, weight: CodebookWeight, *, bits: int) -> gs.Variable:
    """Append the constant-foldable decoder of ``weight`` (see the module docstring); returns W."""
    channels, count = weight.indices.shape
    out = gs.Variable(namer(f"{base}_decoded"), dtype=np.float32, shape=list(weight.shape))
    nodes: list[gs.Node] = []
    if bits == 8:
        idx8: gs.Tensor = add_constant(namer, f"{base}_idx", weight.indices)
    else:
        idx8 = gs.Variable(namer(f"{base}_idx_u8"), dtype=np.uint8, shape=[channels, count])
        nodes.extend(_nibble_unpack(namer, base, weight.indices, idx8))
    idx = gs.Variable(namer(f"{base}_idx_i64"), dtype=np.int64, shape=[channels, count])
    flat = gs.Variable(namer(f"{base}_flat"), dtype=np.float32, shape=[channels, count])
    shape = add_constant(namer, f"{base}_shape", np.asarray(weight.shape, np.int64))
    nodes.append(gs.Node("Cast", namer(f"{base}_CastIndices"), attrs={"to": onnx.TensorProto.INT64}, inputs=[idx8], outputs=[idx]))
    if weight.codebook.shape[0] == channels:  # one codebook per row
        codebook = add_constant(namer, f"{base}_codebook", weight.codebook)
        nodes.append(gs.Node("GatherElements", namer(f"{base}_Lookup"), attrs={"axis": 1}, inputs=[codebook, idx], outputs=[flat]))
    else:  # one codebook shared by all rows
        codebook = add_constant(namer, f"{base}_codebook", weight.codebook[0])
        nodes.append(gs.Node("Gather", namer(f"{base}_Lookup"), attrs={"axis": 0}, inputs=[codebook, idx], outputs=[flat]))
    if weight.scale is not None:
        scaled = gs.Variable(namer(f"{base}_scaled"), dtype=np.float32, shape=[channels, count])
        scale = add_constant(namer, f"{base}_channel_scale", weight.scale.reshape(-1, 1))
        nodes.append(gs.Node("Mul", namer(f"{base}_Scale"), inputs=[flat, scale], outputs=[scaled]))
        flat = scaled
    nodes.append(gs.Node("Reshape", namer(f"{base}_Reshape"), inputs=[flat, shape], outputs=[out]))
    graph.nodes.extend(nodes)
    return out


def _nibble_unpack(namer: Namer, base: str, indices: np.ndarray, out: gs.Variable) -> list[gs.Node]:
    """Nodes turning packed bytes back into ``indices`` (first half low nibbles, second half high)."""
    channels, count = indices.shape
    half = -(-count // 2)
    padded = np.zeros((channels, 2 * half), np.uint8)
    padded[:, :count] = indices
    packed = (padded[:, :half] | (padded[:, half:] << 4)).astype(np.uint8)
    p = add_constant(namer, f"{base}_idx_packed", packed)
    four = add_constant(namer, f"{base}_four", np.array([4], np.uint8))
    hi, shifted, lo = (gs.Variable(namer(f"{base}_{n}"), dtype=np.uint8) for n in ("hi", "shifted", "lo"))
    both = out if count == 2 * half else gs.Variable(namer(f"{base}_idx_padded"), dtype=np.uint8)
    nodes = [
        gs.Node("BitShift", namer(f"{base}_High"), attrs={"direction": "RIGHT"}, inputs=[p, four], outputs=[hi]),
        gs.Node("BitShift", namer(f"{base}_ShiftLeft"), attrs={"direction": "LEFT"}, inputs=[p, four], outputs=[shifted]),
        gs.Node("BitShift", namer(f"{base}_Low"), attrs={"direction": "RIGHT"}, inputs=[shifted, four], outputs=[lo]),
        gs.Node("Concat", namer(f"{base}_Join"), attrs={"axis": 1}, inputs=[lo, hi], outputs=[both]),
    ]
    if both is not out:
        starts, ends, axes = (add_constant(namer, f"{base}_{n}", np.array([v], np.int64)) for n, v in (("start", 0), ("end", count), ("axis", 1)))
        nodes.append(gs.Node("Slice", namer(f"{base}_Trim"), inputs=[both, starts, ends, axes], outputs=[out]))
    return nodes
