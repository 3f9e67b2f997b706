"""Per-group ratios from the pruning options, and searches for MAC/latency targets.

An allocator maps one *level* in ``[0, 1)`` to per-group ratios, increasing
with the level:

* uniform, local scope: every eligible group gets ``level``;
* uniform, global scope: the globally least important ``level`` of all units;
* sensitivity: ``level`` of all free units are removed where the measured
  output deviation per removed unit is lowest (insensitive groups lose more).
  Given ``unit_costs`` (what one unit of each group costs, e.g. its MACs),
  the order is deviation per cost saved instead: the right trade when the
  budget is compute rather than a channel count.

Groups matched by ``layer_ratios`` keep their given ratio; ``skip`` ones get 0.
A MAC or latency target is met by bisection on the level.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence

from .config import PruneChannelsConfig, Scope
from .groups import Group
from .select import achievable_ratio, eligible_groups, global_ratios, matches, row_min_channels, row_units
from .sensitivity import GRID, Curve

logger = logging.getLogger(__name__)


class Allocator:
    """Level -> per-group ratios (see the module docstring)."""

    def __init__(
        self,
        groups: Sequence[Group],
        scores: Mapping[int, float],
        config: PruneChannelsConfig,
        *,
        curves: Mapping[int, Curve] | None = None,  # given: allocate by sensitivity
        unit_costs: Mapping[int, float] | None = None,  # given: sensitivity per cost, not per unit
    ):
        self.groups = list(groups)
        self.scores = scores
        self.config = config
        self.curves = dict(curves or {})
        self.unit_costs = dict(unit_costs or {})
        eligible = set(eligible_groups(groups, config.skip))
        self._sizes = {g.index: len(g.units) for g in self.groups}
        self._by_index = {g.index: g for g in self.groups}
        self.fixed: dict[int, float] = {}
        self.free: dict[int, float] = {}
        self.whole: list[int] = []  # free groups round_to / min_channels leave nothing to remove
        for group in self.groups:
            if group.index not in eligible:
                continue
            override = next(
                (float(v) for p, v in config.layer_ratios.items() if matches(group, [p])), None
            )
            if override is not None:
                self.fixed[group.index] = min(override, config.max_ratio)
            elif self.snap(group.index, config.max_ratio) > 0:
                self.free[group.index] = config.max_ratio
            else:  # its units must not count in the level, or the other groups would lose them instead
                self.whole.append(group.index)

    @property
    def sensitivity_groups(self) -> list[int]:
        """Groups whose ratio the allocation chooses."""
        return sorted(self.free)

    @property
    def candidates(self) -> list[int]:
        """Every group that may be pruned (chosen or given ratios)."""
        return sorted({*self.free, *self.fixed})

    def snap(self, index: int, ratio: float, up: bool = False) -> float:
        """``ratio`` lowered (raised) to one group ``index`` realizes exactly (see :func:`achievable_ratio`)."""
        group = self._by_index[index]
        return achievable_ratio(
            row_units(group), ratio, round_to=self.config.round_to,
            min_channels=row_min_channels(group, self.config.min_channels), up=up,
        )  # fmt: skip

    def grid(self, group: Group) -> list[float]:
        """Distinct realizable ratios near :data:`GRID` (up to ``max_ratio``) to measure ``group`` at."""
        points = {self.snap(group.index, r) for r in GRID if r <= self.config.max_ratio}
        return sorted(points - {0.0})

    def ratios(self, level: float) -> dict[int, float]:
        if self.curves:
            free = self._by_sensitivity(level)
        elif self.config.scope is Scope.GLOBAL:
            free = global_ratios(self.groups, self.scores, level, self.free, self.config.max_ratio)
        else:
            free = {index: min(level, cap) for index, cap in self.free.items()}
        return {**free, **self.fixed}

    def _weighted(self, ratios: Mapping[int, float]) -> float:
        total = sum(self._sizes[i] for i in self.free)
        return sum(ratios[i] * self._sizes[i] for i in self.free) / total if total else 0.0

    def _by_sensitivity(self, level: float) -> dict[int, float]:
        """Remove ``level`` of the free units at the least total deviation.

        Each group's measured points (units removed, deviation) are reduced to
        their lower convex hull from (0, 0); hull segments of all groups are
        taken cheapest deviation-per-unit first until enough units are removed
        (optimal when deviations add up and each group's curve is convex).
        With unit costs, deviation per unit is divided by the unit's cost, so
        the removed cost grows fastest for the deviation; the level still
        counts units, and a target search moves it.
        """
        budget = level * sum(self._sizes[i] for i in self.free)
        default_cost = sum(self.unit_costs.values()) / len(self.unit_costs) if self.unit_costs else 1.0
        segments = []
        for index, cap in self.free.items():
            curve = self.curves.get(index)
            if curve is None:
                continue
            units = self._sizes[index]
            points = [(0.0, 0.0)] + [
                (r * units, d) for r, d in zip(curve.ratios, curve.deviations) if r <= cap + 1e-9
            ]
            hull = _lower_hull(points)
            cost = max(self.unit_costs.get(index, default_cost), 1e-12)
            for (u0, d0), (u1, d1) in itertools.pairwise(hull):
                segments.append(((d1 - d0) / (u1 - u0) / cost, index, u0, u1))
        segments.sort(key=lambda s: s[0])
        removed = dict.fromkeys(self.free, 0.0)
        taken, last = 0.0, None
        for _, index, u0, u1 in segments:
            if taken >= budget:
                break
            step = min(u1 - u0, budget - taken)
            removed[index] = u0 + step
            taken += step
            last = index
        ratios = {i: self.snap(i, removed[i] / self._sizes[i]) for i in self.free}
        if last is not None and sum(ratios[i] * self._sizes[i] for i in ratios) < budget - 1e-9:
            ratios[last] = min(self.snap(last, removed[last] / self._sizes[last], up=True), self.free[last])
        return ratios


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (monotone chain), from the first point."""
    hull: list[tuple[float, float]] = []
    for p in sorted(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def search_level(measure: Callable[[float], float], target: float, *, high: float, steps: int = 12) -> float:
    """Smallest level in ``[0, high]`` with ``measure(level) <= target``, for a
    ``measure`` decreasing in the level (``high`` if the target is out of reach)."""
    if measure(0.0) <= target:
        return 0.0
    if measure(high) > target:
        logger.warning("target %.3f not reached even at level %.3f", target, high)
        return high
    low = 0.0
    for _ in range(steps):
        mid = (low + high) / 2
        if measure(mid) <= target:
            high = mid
        else:
            low = mid
    return high
