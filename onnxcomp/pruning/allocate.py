"""Per-group ratios from the pruning options, and searches for MAC/latency targets.

An allocator maps one *level* in ``[0, 1)`` to per-group ratios, increasing
with the level:

* uniform, local scope: every eligible group gets ``level``;
* uniform, global scope: the globally least important ``level`` of all units;
* sensitivity: a deviation threshold is chosen so that the unit-weighted mean
  ratio equals ``level``; each group gets the largest ratio whose measured
  deviation stays under the threshold (insensitive groups lose more).

Groups matched by ``layer_ratios`` keep their given ratio; ``skip`` ones get 0.
A MAC or latency target is met by bisection on the level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from .config import Allocation, PruneChannelsConfig, Scope
from .groups import Group
from .select import eligible_groups, global_ratios, matches
from .sensitivity import Curve

logger = logging.getLogger(__name__)


class Allocator:
    """Level -> per-group ratios (see the module docstring)."""

    def __init__(
        self,
        groups: Sequence[Group],
        scores: Mapping[int, float],
        config: PruneChannelsConfig,
        *,
        curves: Mapping[int, Curve] | None = None,
    ):
        self.groups = list(groups)
        self.scores = scores
        self.config = config
        self.curves = dict(curves or {})
        eligible = set(eligible_groups(groups, config.skip))
        self.fixed: dict[int, float] = {}
        self.free: dict[int, float] = {}
        for group in self.groups:
            if group.index not in eligible:
                continue
            override = next(
                (float(v) for p, v in config.layer_ratios.items() if matches(group, [p])), None
            )
            if override is not None:
                self.fixed[group.index] = min(override, config.max_ratio)
            else:
                self.free[group.index] = config.max_ratio
        self._sizes = {g.index: len(g.units) for g in self.groups}

    @property
    def sensitivity_groups(self) -> list[int]:
        return sorted(self.free)

    def ratios(self, level: float) -> dict[int, float]:
        if self.config.allocation is Allocation.SENSITIVITY and self.curves:
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
        def at(threshold: float) -> dict[int, float]:
            return {
                i: (self.curves[i].ratio_at(threshold, cap) if i in self.curves else min(level, cap))
                for i, cap in self.free.items()
            }

        top = max((max(c.deviations) for c in self.curves.values()), default=0.0) or 1.0
        low, high = 0.0, top
        if self._weighted(at(high)) <= level:
            return at(high)
        for _ in range(50):
            mid = (low + high) / 2
            if self._weighted(at(mid)) < level:
                low = mid
            else:
                high = mid
        return at(high)


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
