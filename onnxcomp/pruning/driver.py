"""Structured pruning of a graph, end to end (what the ``prune-channels`` pass runs).

1. Measure concrete shapes on one probe input and analyse dependencies.
2. Score units with the criterion (statistics from calibration data if needed).
3. Choose per-group ratios (uniform, global, per layer, sensitivity) and the
   level meeting a MAC or latency target, or read a pruning plan.
4. Record the plan, rewrite the graph, then reconstruct the consuming layers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..context import PassContext
from ..data import Dataset, Feed, ValidatedDataset, input_specs
from ..errors import UsageError
from ..pass_base import PassResult
from ..probe import probe_feed
from ..shapes import clear_intermediate_shapes
from .allocate import Allocator, search_level
from .analysis import Dependencies, analyze
from .config import Allocation, PruneChannelsConfig, Reconstruction
from .criteria import Criterion, unit_scores
from .groups import Group, build_groups, protected_sets, removal_of
from .latency_target import level_for_latency
from .macs import estimate_macs, layer_macs, macs_per_unit
from .members import Removal
from .obs import collect_layer_stats, compensated_arrays, obs_ranking
from .plan import build_plan, load_plan, removed_units
from .reconstruct import compensate_bias, find_sinks, refit_layers
from .rewrite import apply_removal
from .select import eligible_groups, removed_count, row_units, select_units
from .sensitivity import load_curves, sweep
from .shapes import concrete_shapes
from .stats import collect_stats

logger = logging.getLogger(__name__)

ARTIFACT = "prune-channels"


@dataclasses.dataclass
class _Setup:
    original: onnx.ModelProto
    data: Dataset | None
    feed: Feed
    shapes: dict[str, tuple[int, ...]]
    deps: Dependencies
    groups: list[Group]
    criterion: Criterion
    reconstruction: Reconstruction
    allocation: Allocation


def prune_channels(graph: gs.Graph, ctx: PassContext, config: PruneChannelsConfig) -> PassResult:
    """Prune ``graph`` in place according to ``config``."""
    setup = _prepare(graph, ctx, config)
    deps, groups = setup.deps, setup.groups
    stats = None
    if setup.data is not None and (setup.criterion.needs_data or setup.reconstruction is not Reconstruction.NONE):
        stats = collect_stats(setup.original, setup.data, deps.records.observations, progress=ctx.progress)
    scores, fell_back = unit_scores(setup.criterion, deps, groups, stats, ctx.seed, config.activation_shrinkage)
    extra: dict[str, Any] = {}
    if config.plan:
        removed = removed_units(load_plan(config.plan), deps, f"pruning plan {config.plan}")
        level = None
    else:
        removed, level = _choose(setup, config, ctx, scores, extra)
    removal = removal_of(deps, removed)
    summary = _summary(setup, config, removed, level, fell_back)
    plan = build_plan(deps, groups, removal)
    if not removal.any:
        if config.plan or config.ratio > 0 or config.target_macs is not None or config.target_latency is not None:
            ctx.warn(_nothing_removed(setup, config))
        ctx.artifacts[ARTIFACT] = _artifact(setup, plan, extra)
        return PassResult(graph, False, summary)
    if extra.get("whole_groups"):
        ctx.warn(_whole_groups(setup, config, extra["whole_groups"]))
    if setup.data is None and not config.plan:  # a plan chose the channels itself
        ctx.warn(
            "prune-channels had no calibration data: channels were ranked by weight magnitude and nothing was "
            "refitted, so the outputs move far; fine-tune with the plan (--prune-plan) or give --calib"
        )
    sinks = find_sinks(deps, removal, stats) if setup.reconstruction is not Reconstruction.NONE else []
    summary.update(apply_removal(deps, removal))
    clear_intermediate_shapes(graph)
    if setup.reconstruction is Reconstruction.BIAS:
        summary["bias_compensated"] = compensate_bias(graph, sinks)
    elif setup.reconstruction is Reconstruction.LEAST_SQUARES:
        fits = refit_layers(
            graph, ctx.export, sinks, setup.original, setup.data, ridge=config.ridge, seed=ctx.seed, progress=ctx.progress
        )
        summary["layers_refitted"] = len(fits)
        if fits:
            gains = [f["mse_after"] / f["mse_before"] for f in fits if f["mse_before"] > 0]
            summary["refit_error_ratio_median"] = round(float(np.median(gains)), 4) if gains else None
        extra["reconstruction"] = fits
    ctx.artifacts[ARTIFACT] = _artifact(setup, plan, extra)
    return PassResult(graph, True, summary)


def _prepare(graph: gs.Graph, ctx: PassContext, config: PruneChannelsConfig) -> _Setup:
    original = ctx.export(graph)
    data = (
        ValidatedDataset(ctx.data, input_specs(original), limit=config.calib_samples) if ctx.data is not None else None
    )
    criterion = config.criterion
    if criterion is Criterion.AUTO:
        criterion = Criterion.CONTRIBUTION if data is not None else Criterion.L2
    reconstruction = config.reconstruction
    if reconstruction is Reconstruction.AUTO:
        reconstruction = Reconstruction.LEAST_SQUARES if data is not None else Reconstruction.NONE
    allocation = config.allocation
    if allocation is Allocation.AUTO:
        allocation = Allocation.SENSITIVITY if data is not None else Allocation.UNIFORM
    needs = [
        name
        for name, wanted in (
            (f"criterion '{criterion.value}'", criterion.needs_data),
            (f"reconstruction '{reconstruction.value}'", reconstruction is not Reconstruction.NONE),
            ("allocation 'sensitivity'", allocation is Allocation.SENSITIVITY),
        )
        if wanted
    ]
    if needs and data is None:
        raise UsageError(f"prune-channels: {', '.join(needs)} needs calibration data (give --calib DATA)")
    feed, assumed = probe_feed(original, data, seed=ctx.seed)
    if assumed:
        logger.info("pruning analysis assumed input dims %s", assumed)
    shapes = concrete_shapes(original, feed)
    deps = analyze(graph, shapes)
    groups = build_groups(deps)
    return _Setup(original, data, feed, shapes, deps, groups, criterion, reconstruction, allocation)


def _choose(setup: _Setup, config: PruneChannelsConfig, ctx: PassContext, scores, extra) -> tuple[set[int], float]:
    deps, groups = setup.deps, setup.groups
    curves = None
    allocator = Allocator(groups, scores, config)

    def removed_at(group: Group, ratio: float) -> int:
        return removed_count(group, ratio, round_to=config.round_to, min_channels=config.min_channels)

    compensated = None
    if setup.criterion is Criterion.OBS:
        layers = collect_layer_stats(setup.original, deps, setup.data, seed=ctx.seed, progress=ctx.progress)
        scores, results = obs_ranking(
            deps, groups, layers, scores, allocator.candidates, ridge=config.ridge,
            removed_at=removed_at, max_ratio=config.max_ratio, grid=allocator.grid, progress=ctx.progress,
        )  # fmt: skip
        allocator = Allocator(groups, scores, config)

        def compensated(index: int, ratio: float):
            views = results[index].checkpoints.get(removed_at(groups[index], ratio)) if index in results else None
            return compensated_arrays(layers, views) if views else None

    if setup.allocation is Allocation.SENSITIVITY and config.sensitivity_from:
        candidates = [i for i in allocator.sensitivity_groups if allocator.grid(groups[i])]
        curves = load_curves(config.sensitivity_from, groups, candidates)
    elif setup.allocation is Allocation.SENSITIVITY:
        curves = sweep(
            setup.original, deps, groups, scores, setup.data, eligible=allocator.sensitivity_groups,
            grid=allocator.grid, compensated=compensated, metric=ctx.metric, progress=ctx.progress,
        )  # fmt: skip
    if curves is not None:
        extra["sensitivity"] = {
            groups[i].name: dict(zip(map(str, c.ratios), map(float, c.deviations))) for i, c in curves.items()
        }
    compute_budget = config.target_macs is not None or config.target_latency is not None
    base = layer_macs(setup.original, setup.feed) if compute_budget else {}
    # A compute budget is best spent where deviation per MAC saved is lowest (a channel ratio: per channel).
    costs = macs_per_unit(deps, groups, base, allocator.sensitivity_groups) if curves and compute_budget else None
    allocator = Allocator(groups, scores, config, curves=curves, unit_costs=costs)  # curves only with sensitivity
    if allocator.whole:
        extra["whole_groups"] = [g.name for g in groups if g.index in allocator.whole]
    protected = protected_sets(deps)

    def choose(level: float) -> set[int]:
        ratios = allocator.ratios(level)
        return select_units(
            groups, scores, ratios, round_to=config.round_to, min_channels=config.min_channels, protected=protected
        )

    level = config.ratio
    total = max(sum(base.values()), 1)

    def removal_at(lv: float) -> Removal:
        return removal_of(deps, choose(lv))

    def macs_of(removal: Removal) -> float:
        return estimate_macs(deps, removal, base) / total

    if config.target_macs is not None:
        level = search_level(lambda lv: macs_of(removal_at(lv)), config.target_macs, high=config.max_ratio)
        extra["macs_kept_estimate"] = macs_of(removal_at(level))
    elif config.target_latency is not None:
        level, fit = level_for_latency(
            setup.original, setup.shapes, setup.feed, removal_at, macs_of, config.target_latency,
            high=config.max_ratio,
        )  # fmt: skip
        extra["latency_model"] = {"slope": fit.slope, "measured": [{"macs": m, "latency": r} for m, r in fit.points]}
    return choose(level), level


def _summary(setup: _Setup, config, removed: set[int], level: float | None, fell_back: list[str]) -> dict[str, Any]:
    groups = setup.groups
    units = sum(len(g.units) for g in groups if g.prunable)
    summary = {
        "criterion": setup.criterion.value,
        **({"activation_shrinkage": config.activation_shrinkage} if setup.criterion.uses_contribution else {}),
        "allocation": setup.allocation.value,
        "calibration": setup.data is not None,
        "groups": len(groups),
        "groups_pruned": sum(1 for g in groups if any(r in removed for r in g.units)),
        "groups_frozen": sum(1 for g in groups if not g.prunable),
        "units_removed": len(removed),
        "units_prunable": units,
    }
    if level is not None and (config.target_macs is not None or config.target_latency is not None):
        summary["ratio_found"] = round(float(level), 4)
        if setup.allocation is Allocation.SENSITIVITY:
            summary["allocation_cost"] = "macs"  # see _choose: deviation per MAC, not per channel
    if fell_back:
        summary["groups_scored_by_l2"] = len(fell_back)
    return summary


def _nothing_removed(setup: _Setup, config: PruneChannelsConfig) -> str:
    """Why a pruning request removed nothing, in one line."""
    prunable = [g for g in setup.groups if g.prunable]
    if not prunable:
        reasons = [r for g in setup.groups for r in g.reasons]
        because = f" (e.g. {reasons[0]})" if reasons else ""
        return (
            f"prune-channels removed nothing: none of the {len(setup.groups)} channel group(s) can be pruned"
            f"{because}; 'onnxcomp inspect --prunable MODEL' lists why"
        )
    if config.plan:
        return f"prune-channels removed nothing: the pruning plan {config.plan} keeps every channel"
    if not eligible_groups(prunable, config.skip):
        return f"prune-channels removed nothing: all {len(prunable)} prunable group(s) match skip {list(config.skip)}"
    return (
        f"prune-channels removed nothing from {len(prunable)} prunable group(s): each keeps a multiple of "
        f"round_to={config.round_to} and at least min_channels={config.min_channels}; ask for more pruning or lower round_to"
    )


def _whole_groups(setup: _Setup, config: PruneChannelsConfig, names: list[str]) -> str:
    """Why some groups kept every channel, in one line."""
    group = next(g for g in setup.groups if g.name == names[0])
    unit = f"{row_units(group)} channels per conv group" if group.partition else f"{len(group.units)} units"
    return (
        f"prune-channels left {len(names)} group(s) whole, e.g. {group.name} ({unit}): round_to={config.round_to} "
        "and min_channels leave them nothing to remove; a lower round_to prunes them, but onnxruntime runs "
        "channel counts off its block size (8 or 16) more slowly"
    )


def _artifact(setup: _Setup, plan: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    frozen = [{"group": g.name, "channels": g.frozen, "reasons": g.reasons} for g in setup.groups if g.frozen]
    return {"groups": [g.to_dict() for g in setup.groups], "frozen": frozen, "plan": plan, **extra}
