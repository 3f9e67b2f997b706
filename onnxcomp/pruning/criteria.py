"""Importance of prunable units: low scores are removed first.

Scores are computed per channel id and summed over a unit's channels, i.e.
over every layer of the dependency group (group-summed):

* ``l1`` / ``l2``: ``sum |w|`` / ``sum w^2`` of every weight slab the channel
  owns: the producing layer's filter (row), the consuming layers' columns (in
  a grouped conv, the column within the channel's group:
  :mod:`onnxcomp.pruning.columns`) and the depthwise filter in between.
* ``bn-scale``: ``|gamma|`` of a BatchNormalization on the channel (network
  slimming); only meaningful when batch norms were not folded. Groups without
  one use ``l2``.
* ``activation``: mean ``|x|`` of the channel at the inputs of its consuming
  layers, measured on calibration data.
* ``apoz``: ``1 - APoZ``, the fraction of non-zero activations there (for
  ReLU-like activations), with mean ``|x|`` breaking ties.
* ``contribution``: ``sum over consumers of a_c * ||W[:, c]||_2``, the
  expected size of the channel's contribution to the next layers' outputs,
  where ``a_c = (1 - s) * mean|x_c| + s * mean over the layer's channels`` is
  the measured activation shrunk towards the layer's mean by ``s``
  (``activation_shrinkage``). Calibration data cover a few kinds of input; a
  channel that only fires on content they lack (fur, when the calibration
  photographs hold none) measures ~0 and would go first whatever its weights.
  Shrinking hedges that estimate: such a channel keeps a share of the layer's
  mean activation, so its weights decide.
* ``obs``: Optimal Brain Surgeon order: the consumers' output error after a
  least-squares refit without the channel, removed greedily
  (:mod:`onnxcomp.pruning.obs`); ``contribution`` ranks what it does not reach.
* ``random``: a seeded control.

Data criteria fall back to ``l2`` in a group where no channel was observed
(e.g. channels only read by a LayerNorm).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import numpy as np

from ..graph import constant_value
from .analysis import Dependencies
from .columns import consumer_columns, producer_filters, slices_of
from .groups import Group
from .members import Role
from .stats import ChannelStats


class Criterion(enum.Enum):
    AUTO = "auto"
    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn-scale"
    ACTIVATION = "activation"
    APOZ = "apoz"
    CONTRIBUTION = "contribution"
    OBS = "obs"
    RANDOM = "random"

    @property
    def uses_contribution(self) -> bool:
        """Ranks by ``contribution`` (``obs`` where its greedy search does not reach)."""
        return self in (Criterion.CONTRIBUTION, Criterion.OBS)

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.ACTIVATION, Criterion.APOZ, Criterion.CONTRIBUTION, Criterion.OBS)


def unit_scores(
    criterion: Criterion,
    deps: Dependencies,
    groups: list[Group],
    stats: dict[str, ChannelStats] | None = None,
    seed: int = 0,
    shrinkage: float = 0.0,
) -> tuple[dict[int, float], list[str]]:
    """Score of every prunable unit, and the groups that fell back to ``l2``
    (``shrinkage``: see ``contribution`` above)."""
    size = len(deps.sets)
    if criterion is Criterion.RANDOM:
        per_channel = np.random.default_rng(seed).random(size)
    elif criterion in (Criterion.L1, Criterion.L2):
        per_channel = magnitude(deps, 1 if criterion is Criterion.L1 else 2)
    elif criterion is Criterion.BN_SCALE:
        per_channel = bn_scale(deps)
    else:
        base = Criterion.CONTRIBUTION if criterion.uses_contribution else criterion
        per_channel = activation_scores(base, deps, stats or {}, shrinkage=shrinkage)
    fallback_scores = None
    scores: dict[int, float] = {}
    fell_back = []
    for group in groups:
        values = {r: float(np.nansum(per_channel[group.unit_ids[r]])) for r in group.units}
        observed = [r for r in group.units if np.any(np.isfinite(per_channel[group.unit_ids[r]]))]
        if group.units and (not observed or not any(values.values())):
            if fallback_scores is None:
                fallback_scores = magnitude(deps, 2)
            values = {r: float(fallback_scores[group.unit_ids[r]].sum()) for r in group.units}
            fell_back.append(group.name)
        scores.update(values)
    return scores, fell_back


def _weight_slabs(deps: Dependencies) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(channel ids, one row of weights per id) for every weight slab a channel owns:
    filters it is produced by, columns it is read through, depthwise filters;
    grouped convs included (their filters, and each input's columns within its group)."""
    for slabs in (*producer_filters(deps), *slices_of(deps, Role.DEPTHWISE), *consumer_columns(deps)):
        yield slabs.ids, slabs.matrix()


def magnitude(deps: Dependencies, p: int) -> np.ndarray:
    """Per channel: sum over its weight slabs of ``|w|`` (p=1) or ``w^2`` (p=2)."""
    out = np.zeros(len(deps.sets))
    for ids, rows in _weight_slabs(deps):
        values = np.abs(rows.astype(np.float64))
        if p == 2:
            values = values * values
        _scatter(out, ids, values.sum(axis=1))
    return out


def bn_scale(deps: Dependencies) -> np.ndarray:
    """``|gamma|`` of batch norms on each channel; NaN where there is none."""
    out = np.full(len(deps.sets), np.nan)
    for record in deps.records.slices:
        if record.node.op == "BatchNormalization" and record.index == 1 and record.ids.ndim == 1:
            gamma = np.abs(np.asarray(constant_value(record.tensor), dtype=np.float64)).reshape(-1)
            live = record.ids >= 0
            out[record.ids[live]] = np.where(np.isnan(out[record.ids[live]]), 0, out[record.ids[live]]) + gamma[live]
    return out


def activation_scores(
    criterion: Criterion, deps: Dependencies, stats: dict[str, ChannelStats], shrinkage: float = 0.0
) -> np.ndarray:
    """Mean |x|, 1 - APoZ or contribution per channel (NaN where not observed)."""
    total = np.zeros(len(deps.sets))
    count = np.zeros(len(deps.sets))
    consumers = {id(c.node): c for c in consumer_columns(deps)}
    for obs in deps.records.observations:
        s = stats.get(obs.name)
        if s is None:
            continue
        if criterion is Criterion.ACTIVATION:
            value = s.mean_abs
        elif criterion is Criterion.APOZ:
            scale = s.mean_abs.max() or 1.0
            value = (1.0 - s.zeros) + 1e-6 * s.mean_abs / scale
        else:
            consumer = consumers.get(id(obs.node))
            if consumer is None:
                continue
            columns = consumer.matrix().astype(np.float64)
            activation = (1.0 - shrinkage) * s.mean_abs + shrinkage * s.mean_abs.mean()
            value = activation * np.sqrt((columns * columns).sum(axis=1))
        _scatter(total, obs.ids, value)
        _scatter(count, obs.ids, np.ones_like(value))
    if criterion is Criterion.CONTRIBUTION:
        return np.where(count > 0, total, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _scatter(out: np.ndarray, ids: np.ndarray, values: np.ndarray) -> None:
    live = ids >= 0
    np.add.at(out, ids[live], values[live])
