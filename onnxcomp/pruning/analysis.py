"""Dependency analysis: which channels of a graph must be removed together.

The graph is walked once in topological order. Layers with constant weights
create channel ids for their outputs; every other op moves, unites or freezes
the ids reaching it (see the ``rules_*`` modules). Ops the analysis does not
know, ops in other domains, ops holding subgraphs, and graph outputs freeze
every channel they touch, so an unknown construct costs pruning opportunities,
never a broken model.

After the walk, blocks spanning several axes are made rectangular: their ids
are united along all axes but one, so removing a component always removes
whole slabs and every tensor keeps a box shape.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import is_onnx_op
from . import rules_elementwise as ew
from . import rules_layers as layers
from . import rules_shape as shp
from .channels import ChannelSets
from .layout import Layout
from .members import Records
from .state import AnalysisState

logger = logging.getLogger(__name__)

Rule = Callable[[AnalysisState, gs.Node], None]


def _rules() -> dict[str, Rule]:
    table: dict[str, Rule] = {}
    table.update(dict.fromkeys(ew.UNARY_OPS, ew.unary))
    table.update(dict.fromkeys(ew.BROADCAST_OPS, ew.broadcast))
    table.update(dict.fromkeys(ew.REDUCE_OPS | {"ArgMax", "ArgMin"}, ew.reduce))
    table.update(dict.fromkeys(ew.POOL_OPS, ew.spatial))
    table.update(dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), ew.softmax))
    table["BatchNormalization"] = lambda s, n: ew.channel_params(s, n, (1, 2, 3, 4))
    table["InstanceNormalization"] = lambda s, n: ew.channel_params(s, n, (1, 2))
    table["LayerNormalization"] = ew.layer_norm
    table["Pad"] = ew.pad
    table["Resize"] = ew.resize
    table["Upsample"] = ew.resize
    table.update(dict.fromkeys(("Conv", "ConvTranspose"), layers.conv))
    table["Gemm"] = layers.gemm
    table["MatMul"] = layers.matmul
    table["Transpose"] = shp.transpose_rule
    table.update(dict.fromkeys(("Reshape", "Flatten", "Squeeze", "Unsqueeze"), shp.reshape_rule))
    table["Concat"] = shp.concat
    table["Split"] = shp.split
    table["Slice"] = shp.slice_rule
    table["Gather"] = shp.gather
    table["Shape"] = lambda s, n: None
    table["Constant"] = lambda s, n: None
    return table


RULES: dict[str, Rule] = _rules()


@dataclasses.dataclass
class Dependencies:
    """The result of :func:`analyze`."""

    graph: gs.Graph
    shapes: dict[str, tuple[int, ...]]
    sets: ChannelSets
    records: Records
    layouts: dict[str, Layout]


def analyze(graph: gs.Graph, shapes: dict[str, tuple[int, ...]]) -> Dependencies:
    """Find the channel dependencies of ``graph`` (sorted topologically in place).

    Args:
        graph: The graph (not modified apart from node order).
        shapes: Concrete shapes of its tensors (see :mod:`onnxcomp.pruning.shapes`).
    """
    graph.toposort()
    state = AnalysisState(graph, shapes)
    for node in graph.nodes:
        _visit(state, node)
    for tensor in graph.outputs:
        state.freeze(state.layout(tensor), f"reaches graph output '{tensor.name}'")
    _freeze_subgraph_reads(state)
    _rectangularize(state)
    return Dependencies(graph, shapes, state.sets, state.records, state.layouts)


def _visit(state: AnalysisState, node: gs.Node) -> None:
    where = state.where(node)
    rule = RULES.get(node.op) if is_onnx_op(node) else None
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        rule = None
    shape_op = rule is not None and shp.track_shape_values(state, node)
    for index, tensor in enumerate(node.inputs):
        if tensor.name in state.shape_values and not shape_op and not (node.op == "Reshape" and index == 1):
            state.freeze_shape_dims(tensor, f"{where} reads the channel count at run time")
    if rule is None:
        domain = f" (domain {node.domain})" if not is_onnx_op(node) else ""
        state.freeze_inputs(node, f"read by {where}{domain}, which the analysis does not understand")
        return
    rule(state, node)


def _freeze_subgraph_reads(state: AnalysisState) -> None:
    for sub in state.graph.subgraphs(recursive=True):
        for node in sub.nodes:
            for tensor in node.inputs:
                state.freeze(state.layout(tensor), f"read inside a subgraph by {state.where(node)}")


def _rectangularize(state: AnalysisState) -> None:
    """Unite multi-axis blocks along all axes but one until each is a product of per-axis choices."""
    blocks = [b.ids for layout in state.layouts.values() for b in layout if b.ids.ndim > 1]
    blocks += [s.ids for s in state.records.slices if s.ids.ndim > 1]
    changed = True
    while changed:
        changed = False
        for ids in blocks:
            roots = state.sets.roots(ids)
            if _varying_axis(roots) is not None:
                continue
            keep = _best_axis(roots)
            for axis in range(ids.ndim):
                if axis != keep:
                    state.sets.unite_along(ids, axis, "channels split across axes are removed in whole slabs")
            changed = True


def _varying_axis(roots: np.ndarray) -> int | None:
    """An axis such that roots are constant along every other axis, else None."""
    for axis in range(roots.ndim):
        index = tuple(slice(None) if k == axis else slice(0, 1) for k in range(roots.ndim))
        if np.array_equal(np.broadcast_to(roots[index], roots.shape), roots):
            return axis
    return None


def _best_axis(roots: np.ndarray) -> int:
    """The axis along which the first line holds the most distinct components."""
    counts = []
    for axis in range(roots.ndim):
        index = tuple(slice(None) if k == axis else 0 for k in range(roots.ndim))
        counts.append(len(np.unique(roots[index])))
    return int(np.argmax(counts))
