"""Choosing the units to remove from per-group ratios and unit scores.

Within a group the lowest-scoring units go first. A group's kept count is
``round((1 - ratio) * units)``, then rounded to a multiple of ``round_to``
(fast kernels like channel counts that are multiples of 8) and never below
``min_channels``. Grouped convolutions remove the same number of units from
every partition row (one conv group), and ``round_to`` applies to the count
each row keeps: onnxruntime's blocked (NCHWc) kernels run a grouped conv only
when the channels per group are a multiple of the block. Sets recorded as protected (the channels behind a Slice
or Split output) always keep at least one unit, so no tensor becomes empty.

With *global* scope, scores are divided by their group's mean so that groups
of different scales compare, and the lowest ``ratio`` of all units is removed
(at most ``max_ratio`` of any group).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .groups import Group


def kept_count(units: int, ratio: float, *, round_to: int = 1, min_channels: int = 1) -> int:
    """Units a group of ``units`` keeps when pruned by ``ratio``."""
    keep = units - int(math.floor(ratio * units + 0.5))
    if round_to > 1 and units >= round_to:
        keep = min(units, max(round_to, int(round(keep / round_to)) * round_to))
    return int(min(units, max(keep, min_channels, 1)))


def row_units(group: Group) -> int:
    """The units a ratio and ``round_to`` count in: one partition row for a
    group split by grouped convs, else the whole group."""
    return len(group.partition[0]) if group.partition else len(group.units)


def row_min_channels(group: Group, min_channels: int) -> int:
    """``min_channels`` spread over a group's partition rows."""
    return max(1, -(-min_channels // len(group.partition))) if group.partition else min_channels


def removed_count(group: Group, ratio: float, *, round_to: int = 1, min_channels: int = 1) -> int:
    """Units :func:`select_units` removes from ``group`` at ``ratio``."""
    rows = len(group.partition) if group.partition else 1
    per_row = row_units(group)
    keep = kept_count(per_row, ratio, round_to=round_to, min_channels=row_min_channels(group, min_channels))
    return rows * (per_row - keep)


def _removals(units: int, round_to: int, min_channels: int) -> list[int]:
    """Unit counts a group can lose exactly (kept counts rounded like :func:`kept_count`)."""
    if round_to > 1 and units >= round_to:
        keeps = [units, *range(round_to, units, round_to)]
    else:
        keeps = list(range(1, units + 1))
    return sorted(units - k for k in keeps if k >= min(min_channels, units))


def achievable_ratio(
    units: int, ratio: float, *, round_to: int = 1, min_channels: int = 1, up: bool = False
) -> float:
    """The largest ratio not above ``ratio`` (with ``up``: the smallest not
    below it) that :func:`kept_count` realizes exactly."""
    if not units:
        return 0.0
    removals = _removals(units, round_to, min_channels)
    if up:
        target = int(math.ceil(ratio * units - 1e-9))
        return min((r for r in removals if r >= target), default=removals[-1]) / units
    target = int(math.floor(ratio * units + 1e-9))
    return max((r for r in removals if r <= target), default=0) / units


def select_units(
    groups: Sequence[Group],
    scores: Mapping[int, float],
    ratios: Mapping[int, float],
    *,
    round_to: int = 1,
    min_channels: int = 1,
    protected: Iterable[set[int]] = (),
) -> set[int]:
    """Roots of the units to remove (``ratios``: group index -> ratio)."""
    removed: set[int] = set()
    for group in groups:
        ratio = float(ratios.get(group.index, 0.0))
        if ratio <= 0 or not group.prunable:
            continue
        rows = group.partition or [group.units]
        drop = removed_count(group, ratio, round_to=round_to, min_channels=min_channels) // len(rows)
        for row in rows:  # the lowest-scoring units of each row
            removed.update(sorted(row, key=lambda r: (scores.get(r, 0.0), r))[:drop])
    for units in protected:
        if units and units <= removed:
            removed.discard(max(units, key=lambda r: (scores.get(r, 0.0), r)))
    return removed


def matches(group: Group, patterns: Iterable[str]) -> str | None:
    """The first glob pattern matching one of the group's layers or weight names."""
    names = [*group.layers, *group.weights]
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return pattern
    return None


def eligible_groups(groups: Sequence[Group], skip: Sequence[str] = ()) -> list[int]:
    """Indices of the prunable groups no ``skip`` pattern matches."""
    return [g.index for g in groups if g.prunable and not matches(g, skip)]


def global_ratios(
    groups: Sequence[Group], scores: Mapping[int, float], ratio: float, eligible: Mapping[int, float], max_ratio: float
) -> dict[int, float]:
    """Per-group ratios removing the globally lowest ``ratio`` of units (scores normalized per group)."""
    entries = []
    for group in groups:
        if group.index not in eligible:
            continue
        values = np.array([scores.get(r, 0.0) for r in group.units], dtype=np.float64)
        mean = float(values.mean()) if values.size else 0.0
        normalized = values / mean if mean > 0 else np.zeros_like(values)
        entries.extend((float(v), group.index) for v in normalized)
    entries.sort()
    budget = int(round(ratio * len(entries)))
    sizes = {g.index: len(g.units) for g in groups}
    taken = dict.fromkeys(eligible, 0)
    for _, index in entries:
        if budget <= 0:
            break
        if taken[index] + 1 <= max_ratio * sizes[index]:
            taken[index] += 1
            budget -= 1
    return {index: taken[index] / sizes[index] for index in eligible if sizes[index]}
