"""Dependency groups: the coupled layers, their prunable units, and why the rest is frozen.

A *group* is a set of layer outputs (spaces) whose channels were coupled by the
analysis: an MBConv block's expand conv with its depthwise conv and the project
conv reading them, or every layer writing into one residual stream. Its *units*
are the components of coupled channels: removing a unit removes one channel
from every member (or a whole attention head). Frozen channels stay, with the
reasons the analysis gave.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from .analysis import Dependencies
from .channels import FROZEN
from .members import Removal, Role


@dataclasses.dataclass
class Group:
    """Coupled channels of one or more layers.

    Attributes:
        name: The first layer (in graph order) whose outputs are in the group.
        layers: All layers whose output channels are in the group.
        channels: Output channels of those layers, counted once each.
        units: Roots of the prunable components, in channel order.
        unit_ids: Root -> channel ids of that unit.
        frozen: Frozen channels of the group.
        reasons: Why channels are frozen.
        weights: Names of the weights producing the group's channels.
        partition: Units in equal-sized rows that must lose equally many units
            each (grouped convolutions), or None.
    """

    index: int
    name: str
    layers: list[str]
    weights: list[str]
    channels: int
    units: list[int]
    unit_ids: dict[int, np.ndarray]
    frozen: int
    reasons: list[str]
    partition: list[list[int]] | None = None

    @property
    def prunable(self) -> bool:
        return len(self.units) > 1

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "layers": self.layers,
            "channels": self.channels,
            "units": len(self.units),
            "frozen_channels": self.frozen,
            "frozen_reasons": self.reasons,
        }


def build_groups(deps: Dependencies) -> list[Group]:
    """Groups of ``deps``, in the order of their first layer."""
    sets = deps.sets
    members: dict[int, list[int]] = defaultdict(list)
    for space in sets.spaces:
        members[sets.group_of(space.index)].append(space.index)
    components = sets.components()
    units_by_group: dict[int, list[int]] = defaultdict(list)
    for root, ids in components.items():
        units_by_group[sets.group_of(sets.space_of(int(ids[0])))].append(root)
    weights: dict[int, list[str]] = defaultdict(list)
    for record in deps.records.slices:
        if record.role is Role.SOURCE and record.ids.ndim == 1 and record.tensor.name:
            head = sets.group_of(sets.space_of(int(record.ids[0])))
            weights[head].append(record.tensor.name)
    groups = []
    for head in sorted(members):
        spaces = [sets.spaces[i] for i in members[head]]
        ids = np.concatenate([s.ids for s in spaces])
        roots = sets.roots(ids)
        units = sorted(units_by_group.get(head, []), key=lambda r: int(components[r][0]))
        groups.append(
            Group(
                index=len(groups),
                name=spaces[0].node,
                layers=[s.node for s in spaces],
                weights=weights.get(head, []),
                channels=int(ids.size),
                units=units,
                unit_ids={r: components[r] for r in units},
                frozen=int(np.sum(roots == FROZEN)),
                reasons=sets.freeze_reasons(ids),
            )
        )
    _attach_partitions(deps, groups)
    return groups


def _attach_partitions(deps: Dependencies, groups: list[Group]) -> None:
    """Turn grouped-conv partitions into unit rows; conflicting ones freeze the group.

    A partition whose units each hold the same number of channels in every
    row (a channel shuffle before the grouped conv makes every unit a column
    across its groups) constrains nothing: removing any unit removes equally
    from every group.
    """
    owner = {root: g for g in groups for root in g.units}
    for rows in deps.records.partitions:
        roots = deps.sets.roots(rows)
        live = [int(r) for r in np.unique(roots) if r != FROZEN]
        if not live:
            continue
        if not np.any(roots == FROZEN) and _spans_rows_evenly(roots):
            continue
        group = owner[live[0]]
        unit_rows = [sorted({int(r) for r in row if r != FROZEN}) for row in roots]
        flat = [r for row in unit_rows for r in row]
        sizes = {len(row) for row in unit_rows}
        problem = None
        if len(flat) != len(set(flat)) or len(sizes) != 1 or np.any(roots == FROZEN):
            problem = "grouped convolution: channels are not split evenly across groups"
        elif group.partition is not None and group.partition != unit_rows:
            problem = "two grouped convolutions partition the channels differently"
        if problem:
            _freeze_group(deps, group, problem)
        else:
            group.partition = unit_rows


def _spans_rows_evenly(roots: np.ndarray) -> bool:
    """Whether every row of ``roots`` (rows x channels) holds each unit equally often."""
    ordered = np.sort(roots, axis=1)
    return bool(np.all(ordered == ordered[0]))


def _freeze_group(deps: Dependencies, group: Group, reason: str) -> None:
    for root in group.units:
        deps.sets.freeze(group.unit_ids[root], reason)
    group.frozen += sum(group.unit_ids[r].size for r in group.units)
    group.units, group.unit_ids, group.partition = [], {}, None
    if reason not in group.reasons:
        group.reasons.append(reason)


def removal_of(deps: Dependencies, removed_units: set[int]) -> Removal:
    """The per-channel removal mask for a set of removed unit roots."""
    size = len(deps.sets)
    removed = np.zeros(size, dtype=bool)
    if removed_units:
        roots = deps.sets.roots(np.arange(size))
        removed = np.isin(roots, np.fromiter(removed_units, np.int64))
        removed[FROZEN] = False
    return Removal(removed)


def protected_sets(deps: Dependencies) -> list[set[int]]:
    """Unit sets of which at least one must survive (slices and split parts must not be empty)."""
    out = []
    for ids in deps.records.protected:
        roots = deps.sets.roots(ids)
        if np.any(roots == FROZEN):
            continue
        out.append({int(r) for r in np.unique(roots)})
    return out
