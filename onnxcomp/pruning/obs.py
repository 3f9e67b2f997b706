"""Optimal Brain Surgeon ordering: remove the units a least-squares refit misses least.

For a consuming layer ``y = W x + b`` with input covariance ``H`` (measured on
calibration data, damped by ``lam I``), removing the input features ``F`` and
refitting the remaining weights optimally raises the output's squared error by

    dE(F) = tr( W_F [H^-1]_FF^-1 W_F^T )

and the optimal remaining weights are ``W - W_F [H^-1]_FF^-1 [H^-1]_F,:``
(Hassibi & Stork's OBS, applied to whole input channels: ``F`` holds a
channel's features, i.e. its kernel taps for a conv). A unit's score is the sum
of ``dE`` over every layer consuming it. Units are removed greedily in small
batches; after each batch ``H^-1`` is downdated
(``H^-1 <- H^-1 - [H^-1]_:,F [H^-1]_FF^-1 [H^-1]_F,:``) and ``W`` compensated,
so later scores account for what the refit recovers. The removal order becomes
the unit ranking; the compensated weights at chosen counts are kept so a
sensitivity sweep can measure the model after refit rather than after plain
removal. The bias keeps the output mean: ``b' = b + (W - W') mu_x``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from ..activations import iterate_activations
from ..data import Dataset
from ..progress import ProgressFactory, null_progress
from .analysis import Dependencies
from .channels import FROZEN
from .groups import Group
from .layers import (
    LinearView,
    RowSampler,
    input_features,
    layer_arrays,
    layer_kind,
    read_layer,
)
from .members import AxisSlice, Role

logger = logging.getLogger(__name__)

BATCH_FRACTION = 0.02
"""Units removed per greedy step, as a fraction of the units still in the group."""


@dataclasses.dataclass
class LayerStats:
    """A consuming layer with the covariance of its input features."""

    record: AxisSlice
    kind: str
    view: LinearView
    feature_ids: np.ndarray
    mean: np.ndarray
    cov: np.ndarray


def consuming_layers(deps: Dependencies) -> list[tuple[AxisSlice, str]]:
    """The sink weights reconstruction can refit (Conv group 1, Gemm, MatMul)."""
    out = []
    for record in deps.records.slices:
        if record.role is Role.SINK and record.ids.ndim == 1:
            kind = layer_kind(record.node)
            if kind is not None:
                out.append((record, kind))
    return out


def collect_layer_stats(
    model: onnx.ModelProto,
    deps: Dependencies,
    data: Dataset,
    *,
    seed: int = 0,
    progress: ProgressFactory = null_progress,
) -> list[LayerStats]:
    """Input means and covariances of every refittable consuming layer (original model)."""
    layers = consuming_layers(deps)
    if not layers:
        return []
    names = sorted({r.node.inputs[0].name for r, _ in layers})
    sample_rows = RowSampler(data.size(), seed)
    sums: list[list] = [[0, None, None] for _ in layers]
    for _, values in iterate_activations(model, data, names, progress=progress, desc="layer input statistics"):
        for k, (record, kind) in enumerate(layers):
            x = values[record.node.inputs[0].name]
            rows = sample_rows(_row_count(deps, record, kind, x))
            feats = input_features(record.node, kind, x, rows).astype(np.float64)
            acc = sums[k]
            acc[0] += feats.shape[0]
            acc[1] = feats.sum(axis=0) if acc[1] is None else acc[1] + feats.sum(axis=0)
            acc[2] = feats.T @ feats if acc[2] is None else acc[2] + feats.T @ feats
    out = []
    for (record, kind), (n, s, ss) in zip(layers, sums):
        if not n:
            continue
        view = read_layer(record.node, kind)
        mean = s / n
        kernel = view.matrix.shape[1] // record.ids.size
        out.append(
            LayerStats(record, kind, view, np.repeat(record.ids, kernel), mean, ss / n - np.outer(mean, mean))
        )
    return out


def _row_count(deps: Dependencies, record: AxisSlice, kind: str, x: np.ndarray) -> int:
    if kind == "conv":
        shape = deps.shapes.get(record.node.outputs[0].name)
        return int(np.prod(shape[:1] + shape[2:])) if shape else 1
    return int(np.prod(x.shape[:-1]))


@dataclasses.dataclass
class _State:
    """One consuming layer during the greedy elimination."""

    layer: LayerStats
    hinv: np.ndarray
    matrix: np.ndarray
    features: dict[int, np.ndarray]  # unit root -> its feature indices still present

    @classmethod
    def start(cls, layer: LayerStats, roots: np.ndarray, ridge: float) -> _State:
        cov = layer.cov
        lam = ridge * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
        hinv = np.linalg.inv(cov + lam * np.eye(cov.shape[0]))
        features = {int(u): np.flatnonzero(roots == u) for u in np.unique(roots) if u != FROZEN}
        return cls(layer, hinv, layer.view.matrix.copy(), features)


@dataclasses.dataclass
class ObsResult:
    """Greedy removal order of a group's units and the compensated layers at checkpoints."""

    order: list[int]
    checkpoints: dict[int, dict[int, LinearView]]  # units removed -> layer index -> compensated view


def obs_order(
    deps: Dependencies,
    group: Group,
    layers: Sequence[LayerStats],
    *,
    ridge: float,
    max_remove: int,
    checkpoints: Sequence[int] = (),
) -> ObsResult | None:
    """Greedy OBS elimination order of ``group``'s units (None if no layer consumes them)."""
    members = set(group.units)
    states = []
    for index, layer in enumerate(layers):
        roots = deps.sets.roots(layer.feature_ids)
        if members & set(np.unique(roots).tolist()):
            states.append((index, _State.start(layer, roots, ridge)))
    if not states:
        return None
    remaining = list(group.units)
    order: list[int] = []
    saved: dict[int, dict[int, LinearView]] = {}
    marks = sorted({c for c in checkpoints if 0 < c <= max_remove})
    while len(order) < max_remove and remaining:
        scores = np.zeros(len(remaining))
        for _, state in states:
            scores += _scores(state, remaining)
        step = max(1, int(np.ceil(BATCH_FRACTION * len(remaining))))
        upcoming = [m for m in marks if m > len(order)]
        if upcoming:
            step = min(step, upcoming[0] - len(order))
        step = min(step, max_remove - len(order))
        picked = [remaining[i] for i in np.argsort(scores, kind="stable")[:step]]
        for _, state in states:
            _remove(state, picked)
        order.extend(picked)
        taken = set(picked)
        remaining = [r for r in remaining if r not in taken]
        if len(order) in marks:
            saved[len(order)] = {index: _compensated(state) for index, state in states}
    return ObsResult(order, saved)


def _scores(state: _State, units: Sequence[int]) -> np.ndarray:
    """dE of removing each unit alone from this layer (0 for units it does not read)."""
    out = np.zeros(len(units))
    index = {u: i for i, u in enumerate(units)}
    present = [u for u in state.features if u in index]
    if not present:
        return out
    features = [state.features[u] for u in present]
    sizes = {f.size for f in features}
    if len(sizes) == 1:
        idx = np.stack(features)  # (n, b)
        blocks = state.hinv[idx[:, :, None], idx[:, None, :]]
        inv = np.linalg.inv(blocks)
        w = state.matrix[:, idx]  # (o, n, b)
        values = np.einsum("onb,nbc,onc->n", w, inv, w)
    else:
        values = np.array([_block_error(state, f) for f in features])
    for u, v in zip(present, values):
        out[index[u]] = v
    return out


def _block_error(state: _State, features: np.ndarray) -> float:
    block = state.hinv[np.ix_(features, features)]
    w = state.matrix[:, features]
    return float(np.sum((w @ np.linalg.inv(block)) * w))


def _remove(state: _State, units: Sequence[int]) -> None:
    """Downdate ``H^-1`` and compensate ``W`` for removing ``units``' features."""
    parts = [state.features.pop(u) for u in units if u in state.features]
    if not parts:
        return
    features = np.concatenate(parts)
    block_inv = np.linalg.inv(state.hinv[np.ix_(features, features)])
    rows = state.hinv[features, :]
    state.matrix -= state.matrix[:, features] @ block_inv @ rows
    state.hinv -= state.hinv[:, features] @ block_inv @ rows
    state.matrix[:, features] = 0.0
    state.hinv[features, :] = 0.0
    state.hinv[:, features] = 0.0


def _compensated(state: _State) -> LinearView:
    layer = state.layer
    bias = layer.view.bias + (layer.view.matrix - state.matrix) @ layer.mean
    return LinearView(state.matrix.copy(), bias)


def obs_ranking(
    deps: Dependencies,
    groups: Sequence[Group],
    layers: Sequence[LayerStats],
    base: dict[int, float],
    eligible: Sequence[int],
    *,
    ridge: float,
    removed_at: Callable[[Group, float], int],
    max_ratio: float,
    grid: Callable[[Group], Sequence[float]],
    progress: ProgressFactory = null_progress,
) -> tuple[dict[int, float], dict[int, ObsResult]]:
    """Unit scores from the greedy OBS order (the removal rank), for every
    eligible group some refittable layer consumes; ``base`` scores the rest and
    the units never reached (ranked after the ordered ones)."""
    scores = dict(base)
    results: dict[int, ObsResult] = {}
    by_index = {g.index: g for g in groups}
    bar = progress(len(eligible), "OBS ordering", "group")
    try:
        for index in eligible:
            group = by_index[index]
            result = obs_order(
                deps, group, layers, ridge=ridge, max_remove=removed_at(group, max_ratio),
                checkpoints=[removed_at(group, r) for r in grid(group)],
            )  # fmt: skip
            bar.update(1)
            if result is None:
                continue
            results[index] = result
            top = max((abs(base.get(r, 0.0)) for r in group.units), default=0.0) or 1.0
            ordered = set(result.order)
            for rank, root in enumerate(result.order):
                scores[root] = float(rank)
            for root in group.units:
                if root not in ordered:
                    scores[root] = len(result.order) + abs(base.get(root, 0.0)) / top
    finally:
        bar.close()
    return scores, results


def compensated_arrays(layers: Sequence[LayerStats], views: dict[int, LinearView]) -> dict[str, np.ndarray]:
    """Refitted layers as initializer arrays (for a sensitivity sweep)."""
    out: dict[str, np.ndarray] = {}
    for index, view in views.items():
        layer = layers[index]
        out.update(layer_arrays(layer.record.node, layer.kind, view))
    return out
