"""Applying a removal to the graph: every recorded tensor really shrinks.

Weights lose rows (removed output channels) and columns (removed input
channels), biases and per-channel parameters lose entries, depthwise convs get
a smaller ``group``, shape constants and slice/split bounds are recomputed.
Constants are edited in place only when the node is their only reader;
otherwise the node gets its own edited copy (so a constant shared with an
untouched node keeps its value there).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Namer, add_constant, constant_value, private_constant, set_constant
from .analysis import Dependencies
from .members import Removal

logger = logging.getLogger(__name__)


def apply_removal(deps: Dependencies, removal: Removal) -> dict[str, int]:
    """Shrink the graph of ``deps`` by ``removal``; returns counts of edits."""
    graph = deps.graph
    namer = Namer(graph)
    counts = {"constants_sliced": 0, "shape_constants": 0, "groups_updated": 0}
    records = deps.records
    for record in records.slices:
        value = _current(record.node, record.index)
        sliced = value
        for k, axis in enumerate(record.axes):
            mask = removal.kept_along(record.ids, k)
            if not mask.all():
                sliced = np.compress(mask, sliced, axis=axis)
        if sliced is not value:
            _replace(graph, namer, record.node, record.index, sliced)
            counts["constants_sliced"] += 1
    for record in records.grouped_convs:
        _rewrite_grouped_conv(graph, namer, record, removal)
    for record in records.group_counts:
        kept = int(removal.kept_along(record.ids, 0).sum())
        if kept != int(record.node.attrs.get("group", 1)):
            record.node.attrs["group"] = kept
            counts["groups_updated"] += 1
    for record in records.shape_entries:
        value = np.array(_current(record.node, record.index), copy=True)
        kept = int(removal.kept_along(record.ids, record.axis).sum())
        if int(value.reshape(-1)[record.offset]) != kept:
            value.reshape(-1)[record.offset] = kept
            _replace(graph, namer, record.node, record.index, value)
            counts["shape_constants"] += 1
    for record in records.slice_bounds:
        kept = removal.kept_along(record.ids, record.axis)
        bounds = (int(kept[: record.start].sum()), int(kept[: record.end].sum()))
        counts["shape_constants"] += _set_slice_bounds(graph, namer, record, bounds)
    for record in records.split_sizes:
        kept = removal.kept_along(record.ids, record.axis)
        offsets = np.cumsum((0, *record.sizes))
        sizes = [int(kept[a:b].sum()) for a, b in itertools.pairwise(offsets)]
        counts["shape_constants"] += _set_split_sizes(graph, namer, record.node, sizes)
    return counts


def _current(node: gs.Node, index: int) -> np.ndarray:
    value = constant_value(node.inputs[index])
    if value is None:
        raise ValueError(f"input {index} of {node.op} '{node.name}' is no longer a constant")
    return value


def _replace(graph: gs.Graph, namer: Namer, node: gs.Node, index: int, values: np.ndarray) -> None:
    """Give ``node.inputs[index]`` the new ``values`` (in place if private, else a copy)."""
    tensor = node.inputs[index]
    values = np.asarray(values, dtype=np.asarray(constant_value(tensor)).dtype)
    if private_constant(graph, tensor) is not None:
        set_constant(tensor, values)
    else:
        node.inputs[index] = add_constant(namer, tensor.name or f"{node.name}_input{index}", values)


def _rewrite_grouped_conv(graph: gs.Graph, namer: Namer, record, removal: Removal) -> None:
    node, group = record.node, record.group
    weight = _current(node, 1)
    out_kept = removal.kept_along(record.out_ids, 0).reshape(group, -1)
    in_kept = (
        removal.kept_along(record.in_ids, 0).reshape(group, -1)
        if record.in_ids is not None
        else np.ones((group, weight.shape[1]), dtype=bool)
    )
    if out_kept.all() and in_kept.all():
        return
    per_group = weight.reshape((group, -1) + weight.shape[1:])
    parts = [per_group[g][out_kept[g]][:, in_kept[g]] for g in range(group)]
    _replace(graph, namer, node, 1, np.concatenate(parts, axis=0))


def _set_slice_bounds(graph: gs.Graph, namer: Namer, record, bounds: tuple[int, int]) -> int:
    node, entry = record.node, record.entry
    changed = 0
    for (position, attr_name), value in zip(((1, "starts"), (2, "ends")), bounds):
        if len(node.inputs) > 1:
            current = np.array(_current(node, position), copy=True)
            if int(current.reshape(-1)[entry]) != value:
                current.reshape(-1)[entry] = value
                _replace(graph, namer, node, position, current)
                changed += 1
        else:
            values = list(node.attrs[attr_name])
            if values[entry] != value:
                values[entry] = value
                node.attrs[attr_name] = values
                changed += 1
    return changed


def _set_split_sizes(graph: gs.Graph, namer: Namer, node: gs.Node, sizes: list[int]) -> int:
    array = np.asarray(sizes, dtype=np.int64)
    if len(node.inputs) > 1 and node.inputs[1].name:
        if np.array_equal(_current(node, 1).reshape(-1), array):
            return 0
        _replace(graph, namer, node, 1, array)
        return 1
    if "split" in node.attrs or (graph.opset or 13) < 13:
        if list(node.attrs.get("split", [])) == sizes:
            return 0
        node.attrs["split"] = sizes
        return 1
    if len(set(sizes)) == 1 and "num_outputs" not in node.attrs:
        return 0
    node.attrs.pop("num_outputs", None)
    while len(node.inputs) < 1:
        node.inputs.append(gs.Variable.empty())
    node.inputs.append(add_constant(namer, f"{node.name or 'Split'}_split", array))
    return 1
