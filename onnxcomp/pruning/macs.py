"""Predicting the MACs of a pruned model without building it.

The MACs of a compute layer are proportional to the sizes of the axes pruning
cuts: a Conv's output channels times its input channels per group, a MatMul's
output features times its contracted features, an attention product's heads.
The analysis records those axes per layer (:class:`~onnxcomp.pruning.members.MacLayer`),
so the pruned count is the unpruned count (from :mod:`onnxcomp.analysis`) times
the kept fraction along each recorded axis.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..analysis import count_macs
from ..data import Feed, input_specs
from .analysis import Dependencies
from .groups import Group, removal_of
from .members import Removal


def layer_macs(model: onnx.ModelProto, feed: Feed) -> dict[str, int]:
    """MACs of every compute layer of ``model`` for the input ``feed``, by node name."""
    shapes = {k: tuple(int(d) for d in np.shape(v)) for k, v in feed.items()}
    layers, _ = count_macs(model, input_specs(model), shapes, feed)
    return {layer.node: layer.macs for layer in layers}


def estimate_macs(deps: Dependencies, removal: Removal, base: dict[str, int]) -> int:
    """Total MACs after ``removal`` (layers the analysis did not touch keep theirs)."""
    total = sum(base.values())
    for layer in deps.records.mac_layers:
        macs = base.get(layer.node.name)
        if macs is None:
            continue
        fraction = 1.0
        for ids, axis in layer.factors:
            fraction *= float(removal.kept_along(ids, axis).mean())
        total -= macs - int(round(macs * fraction))
    return total


def macs_per_unit(deps: Dependencies, groups: list[Group], base: dict[str, int], indices) -> dict[int, float]:
    """MACs one unit of each group carries (its first unit removed alone), by group index."""
    total = sum(base.values())
    return {
        index: float(max(total - estimate_macs(deps, removal_of(deps, {groups[index].units[0]}), base), 1))
        for index in indices
        if groups[index].units
    }
