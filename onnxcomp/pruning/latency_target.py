"""Finding the pruning level that meets a latency target, on a noisy machine.

Bisecting on one short measurement per level (the obvious search) follows the
noise: on a shared 2-core machine successive measurements of EfficientNet-Lite1
pruned at nearby levels read 0.77, 0.67, 0.73 of the unpruned latency, and the
search stopped wherever a fast reading happened to fall. Instead, latency is
modelled as falling in proportion to the MACs removed,

    latency ratio = 1 - s * (1 - MAC ratio),

where the MAC ratio of any level is predicted exactly without building the
model (:func:`~onnxcomp.pruning.macs.estimate_macs`) and ``s`` (below 1 where
fixed costs do not shrink) is fitted by least squares to a few pruned copies
measured *together*, interleaved with the unpruned model, so load changes hit
all of them alike. Two rounds: copies spread around the level the MAC target
alone would give, then copies around the first round's answer; the level
comes from the MAC prediction of the final fit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx

from ..ir import export_model, import_graph
from ..latency import measure_latency
from ..shapes import clear_intermediate_shapes
from .allocate import search_level
from .analysis import analyze
from .members import Removal
from .rewrite import apply_removal

logger = logging.getLogger(__name__)

SPREAD = (0.8, 1.0, 1.2)
"""Levels measured per round, relative to the round's current estimate."""


@dataclasses.dataclass
class LatencyFit:
    """The fitted model and the measurements behind it."""

    slope: float  # s: latency falls s times as fast as MACs
    points: list[tuple[float, float]]  # (MAC ratio, measured latency ratio)

    def macs_for(self, latency_ratio: float) -> float:
        """MAC ratio the model predicts for ``latency_ratio``."""
        return 1.0 - (1.0 - latency_ratio) / self.slope


def pruned_copy(original: onnx.ModelProto, shapes: dict, removal: Removal) -> onnx.ModelProto:
    """``original`` with ``removal`` applied (the analysis is deterministic, so
    channel ids match those of any other analysis of the same model)."""
    graph = import_graph(original)
    deps = analyze(graph, shapes)
    if len(deps.sets) != removal.removed.size:
        raise RuntimeError("dependency analysis is not deterministic")
    apply_removal(deps, removal)
    clear_intermediate_shapes(graph)
    return export_model(graph, original)


def fit_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares ``s`` of ``1 - r = s (1 - m)`` over (MAC ratio m, latency ratio r) points.

    Kept in [0.2, 2]: outside it the measurements are noise, not a trend.
    """
    saved = np.array([1.0 - m for m, _ in points])
    faster = np.array([1.0 - r for _, r in points])
    if not np.any(saved > 0):
        return 1.0
    return float(np.clip(saved @ faster / (saved @ saved), 0.2, 2.0))


def level_for_latency(
    original: onnx.ModelProto,
    shapes: dict,
    feed,
    removal_at: Callable[[float], Removal],
    macs_of: Callable[[Removal], float],
    target: float,
    *,
    high: float,
    budget_s: float = 3.0,
) -> tuple[float, LatencyFit]:
    """Smallest level whose predicted latency ratio is at most ``target``.

    ``removal_at(level)`` gives the channels a level removes and
    ``macs_of(removal)`` the predicted MAC ratio after it (decreasing in the level).
    """

    def macs_at(level: float) -> float:
        return macs_of(removal_at(level))

    fit = LatencyFit(1.0, [])
    level = search_level(macs_at, target, high=high)
    if level == 0.0:  # met without pruning
        return level, fit
    for _ in range(2):
        levels = sorted({min(max(level * f, 1e-3), high) for f in SPREAD})
        models = {"unpruned": original}
        macs = {}
        for lv in levels:
            removal = removal_at(lv)
            if removal.any:
                models[f"{lv:.4f}"] = pruned_copy(original, shapes, removal)
                macs[f"{lv:.4f}"] = macs_of(removal)
        if len(models) == 1:
            break
        timings = measure_latency(models, feed, budget_s=budget_s, reference="unpruned")
        fit.points += [(macs[name], timings[name].ratio) for name in macs]
        fit.slope = fit_slope(fit.points)
        level = search_level(macs_at, fit.macs_for(target), high=high)
        logger.info("latency model: slope %.3f from %s -> level %.4f", fit.slope, fit.points, level)
    return level, fit
