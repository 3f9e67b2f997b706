"""Rules for the layers that create and consume channels.

* Conv (group 1), ConvTranspose (group 1), Gemm and MatMul with a constant 2-D
  weight *consume* the channels of their input (weight columns are cut) and
  *create* a fresh set of output channels (weight rows are cut).
* A depthwise Conv/ConvTranspose (``group == C_in == C_out``) passes channel
  ``i`` from input to output: filter ``i`` and the ``group`` attribute follow.
* A grouped Conv (``1 < group``) creates output channels and consumes input
  channels group by group; both sides must lose the same number of channels in
  every group (recorded as partitions), so ``C/group`` stays whole.
* MatMul of two computed tensors (attention) unites channels on the batch axes
  of both operands (heads) and on the contracted axis.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import attr
from .layout import Block, block_on, single_axis_ids, unite_blocks
from .members import AxisSlice, GroupCount, GroupedConv, MacLayer, Observation, Role
from .rules_elementwise import _cover
from .state import AnalysisState, optional_input


def _input_channels(state: AnalysisState, node: gs.Node, axis: int, batch_passes: bool = False) -> np.ndarray | None:
    """1-D ids on ``axis`` of the layer input. Blocks on other axes are frozen,
    except leading (batch) axes of a MatMul when ``batch_passes``."""
    x = node.inputs[0]
    layout = state.layout(x)
    ids = single_axis_ids(layout, axis)
    if isinstance(ids, str):
        state.freeze(layout, f"{state.where(node)}: {ids}")
        return None
    for block in layout:
        if axis not in block.axes and not (batch_passes and block.axes[-1] < axis):
            state.sets.freeze(block.ids, f"{state.where(node)} mixes the axes these channels are on")
    if ids is not None:
        state.records.observations.append(Observation(x.name, axis, ids, node))
    return ids


def _weight_and_bias_slices(state, node, out_ids, weight_axis, bias_index, role=Role.SOURCE) -> None:
    state.records.slices.append(AxisSlice(node, 1, (weight_axis,), out_ids, role))
    bias = optional_input(node, bias_index)
    if bias is not None:
        state.records.slices.append(AxisSlice(node, bias_index, (0,), out_ids, Role.BIAS))


def conv(state: AnalysisState, node: gs.Node) -> None:
    weight = state.const(node.inputs[1])
    if weight is None or weight.dtype.kind != "f":
        state.freeze_inputs(node, f"{state.where(node)}: weight is not a float constant")
        return
    transposed = node.op == "ConvTranspose"
    group = int(attr(node, "group", 1))
    if transposed:
        c_in, c_out = weight.shape[0], weight.shape[1] * group
    else:
        c_out, c_in = weight.shape[0], weight.shape[1] * group
    in_ids = _input_channels(state, node, 1)
    where = state.where(node)
    if group > 1 and group == c_in == c_out:
        if in_ids is not None:
            _weight_and_bias_slices(state, node, in_ids, 0, 2, Role.DEPTHWISE)
            state.records.group_counts.append(GroupCount(node, in_ids))
            state.records.mac_layers.append(MacLayer(node, [(in_ids, 0)]))
            state.set_layout(node.outputs[0], (Block((1,), in_ids),))
        return
    if group > 1 and (transposed or weight.shape[1] == 1):
        if in_ids is not None:
            state.sets.freeze(in_ids, f"{where}: grouped layer with one input channel per group")
        return
    out_ids = state.new_channels(node, c_out)
    factors = [(out_ids, 0)]
    if group > 1:
        if in_ids is not None:
            state.records.partitions.append(in_ids.reshape(group, -1))
            factors.append((in_ids, 0))
        state.records.partitions.append(out_ids.reshape(group, -1))
        state.records.grouped_convs.append(GroupedConv(node, in_ids, out_ids, group))
        bias = optional_input(node, 2)
        if bias is not None:
            state.records.slices.append(AxisSlice(node, 2, (0,), out_ids, Role.BIAS))
    else:
        in_axis, out_axis = (0, 1) if transposed else (1, 0)
        if in_ids is not None:
            state.records.slices.append(AxisSlice(node, 1, (in_axis,), in_ids, Role.SINK))
            factors.append((in_ids, 0))
        _weight_and_bias_slices(state, node, out_ids, out_axis, 2)
    state.records.mac_layers.append(MacLayer(node, factors))
    state.set_layout(node.outputs[0], (Block((1,), out_ids),))


def gemm(state: AnalysisState, node: gs.Node) -> None:
    weight = state.const(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or attr(node, "transA", 0):
        state.freeze_inputs(node, f"{state.where(node)}: not a Gemm with a constant float weight")
        return
    trans_b = bool(attr(node, "transB", 0))
    in_ids = _input_channels(state, node, 1)
    out_ids = state.new_channels(node, weight.shape[0] if trans_b else weight.shape[1])
    factors = [(out_ids, 0)]
    state.records.slices.append(AxisSlice(node, 1, (0 if trans_b else 1,), out_ids, Role.SOURCE))
    if in_ids is not None:
        state.records.slices.append(AxisSlice(node, 1, (1 if trans_b else 0,), in_ids, Role.SINK))
        factors.append((in_ids, 0))
    bias = optional_input(node, 2)
    if bias is not None:
        shape = state.shape(bias)
        _cover(state, node, 2, bias, shape, 2 - len(shape), (), Block((1,), out_ids))
        for record in state.records.slices[-1:]:
            if record.node is node and record.index == 2:
                record.role = Role.BIAS
    state.records.mac_layers.append(MacLayer(node, factors))
    state.set_layout(node.outputs[0], (Block((1,), out_ids),))


def matmul(state: AnalysisState, node: gs.Node) -> None:
    a, b = node.inputs
    weight = state.const(b)
    rank = state.rank(a)
    if weight is not None and weight.ndim == 2 and weight.dtype.kind == "f" and rank and rank >= 2:
        in_ids = _input_channels(state, node, rank - 1, batch_passes=True)
        out_ids = state.new_channels(node, weight.shape[1])
        state.records.slices.append(AxisSlice(node, 1, (1,), out_ids, Role.SOURCE))
        factors = [(out_ids, 0)]
        if in_ids is not None:
            state.records.slices.append(AxisSlice(node, 1, (0,), in_ids, Role.SINK))
            factors.append((in_ids, 0))
        state.records.mac_layers.append(MacLayer(node, factors))
        passing = [blk for blk in state.layout(a) if rank - 1 not in blk.axes]
        state.set_layout(node.outputs[0], (*passing, Block((rank - 1,), out_ids)))
        return
    if state.const(a) is not None or weight is not None:
        state.freeze_inputs(node, f"{state.where(node)}: constant operand is not a 2-D float weight")
        return
    dynamic_matmul(state, node)


def dynamic_matmul(state: AnalysisState, node: gs.Node) -> None:
    """``A[..., M, K] @ B[..., K, N]`` with both operands computed (attention).

    Channels on the contracted axis K of both operands are united position by
    position (removing channel k drops the term ``A[.., k] * B[k, ..]`` from
    every sum on both sides). A block spanning K and other axes (a head split
    into ``[heads, head_dim]``) is first united along K, so whole heads go.
    Batch axes broadcast and unite like an elementwise op; M comes from A and
    N from B.
    """
    a, b = node.inputs
    sa, sb, so = state.shape(a), state.shape(b), state.shape(node.outputs[0])
    where = state.where(node)
    if sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
        state.freeze_inputs(node, f"{where}: operand shapes unknown or 1-D")
        return
    ra, rb, r = len(sa), len(sb), len(so)
    la = _contract(state, node, state.layout(a), ra - 1)
    lb = _contract(state, node, state.layout(b), rb - 2)
    ka, kb = block_on(state.layout(a), ra - 1), block_on(state.layout(b), rb - 2)
    k_ids = _unite_contracted(state, node, ka, kb, sa[-1])
    map_a = {ax: ax + r - ra for ax in range(ra - 1)}
    map_b = {ax: ax + r - rb for ax in range(rb - 2)}
    map_b[rb - 1] = r - 1
    moved = [(blk.moved(map_a), so) for blk in la] + [(blk.moved(map_b), so) for blk in lb]
    merged = unite_blocks(moved, state.sets, f"{where} combines them")
    for blk in merged:
        for ax in blk.axes:
            if ax >= r - 2:
                continue
            for tensor_layout, rank_t, shape_t in ((la, ra, sa), (lb, rb, sb)):
                local = ax - (r - rank_t)
                has = any(local in x.axes for x in tensor_layout)
                if local >= 0 and shape_t[local] > 1 and not has:
                    state.sets.freeze(blk.ids, f"{where} combines them with a tensor whose channels cannot be pruned")
    factors = [(blk.ids, k) for blk in merged for k in range(len(blk.axes))]
    if k_ids is not None:
        factors.append((k_ids, 0))
    state.records.mac_layers.append(MacLayer(node, factors))
    state.set_layout(node.outputs[0], merged)


def _contract(state: AnalysisState, node: gs.Node, layout, k_axis: int) -> list[Block]:
    """Blocks of an operand with the contracted axis removed (multi-axis blocks
    united along it first)."""
    out = []
    for block in layout:
        if k_axis not in block.axes:
            out.append(block)
            continue
        if len(block.axes) == 1:
            continue
        k = block.along(k_axis)
        ids = state.sets.unite_along(block.ids, k, f"{state.where(node)} contracts a split channel axis")
        out.append(Block(tuple(x for x in block.axes if x != k_axis), ids))
    return out


def _unite_contracted(state, node, ka: Block | None, kb: Block | None, size: int) -> np.ndarray | None:
    """Couple the contracted positions of both operands; returns ids along K (or None)."""
    where = state.where(node)
    single_a = ka is not None and len(ka.axes) == 1
    single_b = kb is not None and len(kb.axes) == 1
    if single_a and single_b:
        state.sets.unite(ka.ids, kb.ids, f"{where} contracts them together")
        return ka.ids
    if (ka is None) != (kb is None) and size > 1:
        tagged = ka if ka is not None else kb
        state.sets.freeze(tagged.ids, f"{where} contracts them with a tensor whose channels cannot be pruned")
        return None
    if single_a != single_b and ka is not None and kb is not None:
        state.sets.freeze(ka.ids, f"{where}: contracted channels are split differently")
        state.sets.freeze(kb.ids, f"{where}: contracted channels are split differently")
    return None
