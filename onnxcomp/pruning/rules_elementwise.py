"""Rules for ops that keep channels where they are: activations, broadcasting
arithmetic, normalizations, reductions, pooling, padding and resizing.

Broadcasting follows numpy/ONNX rules (inputs aligned on their last axes). When
two operands both carry channels on an axis, their ids are united (a residual
``Add`` couples both branches; an SE block's ``Mul`` couples the gate with the
gated feature map). A constant operand that spans a channel axis is sliced with
the channels (a MatMul's bias ``Add``, a PRelu slope, LayerNorm's gamma); a
computed operand that spans it without carrying channels freezes them, since it
cannot lose those positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import attr
from .layout import Block, Layout, block_on, shift, unite_blocks
from .members import AxisSlice, Role, ShapeEntry
from .state import AnalysisState, optional_input

UNARY_OPS = frozenset(
    {
        "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
        "Softplus", "Softsign", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs",
        "Sin", "Cos", "Tan", "Floor", "Ceil", "Round", "Sign", "Mish", "Identity", "Dropout",
        "Cast", "CastLike", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Clip",
    }
)  # fmt: skip

BROADCAST_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Equal",
        "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Where", "Mod",
    }
)  # fmt: skip

REDUCE_OPS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceMax",
        "ReduceMin", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp",
    }
)  # fmt: skip

POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
)


def unary(state: AnalysisState, node: gs.Node) -> None:
    """Same layout on every output (Dropout's mask included)."""
    layout = state.layout(node.inputs[0])
    for out in node.outputs:
        state.set_layout(out, layout)


def broadcast(state: AnalysisState, node: gs.Node) -> None:
    """Elementwise ops with multidirectional broadcasting."""
    out_shape = state.shape(node.outputs[0])
    if out_shape is None:
        state.freeze_inputs(node, f"{state.where(node)}: output shape unknown")
        return
    operands = [(i, state.layout(t)) for i, t in enumerate(node.inputs)]
    state.set_layout(node.outputs[0], combine_operands(state, node, operands, out_shape))


def combine_operands(
    state: AnalysisState, node: gs.Node, operands: Sequence[tuple[int, Layout]], out_shape: Sequence[int]
) -> Layout:
    """Unite the channels of broadcast operands (``(input index, layout)`` pairs)
    and slice or freeze the operands that span channel axes without carrying them."""
    rank = len(out_shape)
    where = state.where(node)
    pending: list[tuple[Block, Sequence[int]]] = []
    aligned = []
    for index, layout in operands:
        tensor = node.inputs[index]
        shape = state.shape(tensor) if tensor.name else None
        if shape is None:
            continue
        offset = rank - len(shape)
        layout = shift(layout, offset)
        aligned.append((index, tensor, shape, offset, layout))
        for block in layout:
            if any(shape[a - offset] == 1 and out_shape[a] > 1 for a in block.axes):
                state.sets.freeze(block.ids, f"{where}: a single channel is broadcast")
                continue
            pending.append((block, out_shape))
    merged = unite_blocks(pending, state.sets, f"{where} combines them")
    for block in merged:
        for index, tensor, shape, offset, layout in aligned:
            _cover(state, node, index, tensor, shape, offset, layout, block)
    return merged


def _cover(state, node, index, tensor, shape, offset, layout, block: Block) -> None:
    """Make operand ``tensor`` follow ``block``'s channels along the axes it spans."""
    cut = [
        a
        for a in block.axes
        if a - offset >= 0 and shape[a - offset] > 1 and block_on(layout, a) is None
    ]
    if not cut:
        return
    value = state.const(tensor)
    if value is None:
        state.sets.freeze(
            block.ids,
            f"{state.where(node)} combines them with '{tensor.name}', whose channels cannot be pruned",
        )
        return
    picked = tuple(slice(None) if a in cut else 0 for a in block.axes)
    state.records.slices.append(
        AxisSlice(node, index, tuple(a - offset for a in cut), block.ids[picked], Role.PARAM)
    )


def reduce(state: AnalysisState, node: gs.Node) -> None:
    """Reductions: channels on a fully reduced axis are consumed (like a layer
    input); a multi-axis block losing one axis is united along it."""
    x = node.inputs[0]
    rank = state.input_rank(node)
    if rank is None:
        return
    axes = _reduce_axes(state, node, rank)
    if axes is None:
        state.freeze_inputs(node, f"{state.where(node)}: reduction axes are not constant")
        return
    keep = bool(attr(node, "keepdims", 1))
    if node.op in ("ArgMax", "ArgMin"):
        if block_on(state.layout(x), axes[0]) is not None:
            state.freeze(state.layout(x), f"{state.where(node)} returns channel indices")
            return
    out = []
    for block in state.layout(x):
        ids, kept_axes = block.ids, list(block.axes)
        gone = [a for a in kept_axes if a in axes]
        if len(gone) == len(kept_axes):
            continue
        for a in gone:
            k = kept_axes.index(a)
            ids = state.sets.unite_along(ids, k, f"{state.where(node)} reduces part of a split channel axis")
            kept_axes.pop(k)
        if not keep:
            kept_axes = [a - sum(1 for r in axes if r < a) for a in kept_axes]
        out.append(Block(tuple(kept_axes), ids))
    state.set_layout(node.outputs[0], out)


def _reduce_axes(state: AnalysisState, node: gs.Node, rank: int) -> list[int] | None:
    if node.op in ("ArgMax", "ArgMin"):
        return [int(attr(node, "axis", 0)) % rank]
    axes_t = optional_input(node, 1)
    if axes_t is not None:
        value = state.const(axes_t)
        if value is None:
            return None
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    else:
        axes = list(attr(node, "axes", []))
    if not axes:
        return [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted({a % rank for a in axes})


def softmax(state: AnalysisState, node: gs.Node) -> None:
    """Softmax normalizes over its axis: channels there cannot be removed."""
    rank = state.input_rank(node)
    if rank is None:
        return
    layout = state.layout(node.inputs[0])
    opset = state.graph.opset or 13
    axis = int(attr(node, "axis", 1 if opset < 13 else -1)) % rank
    normalized = set(range(axis, rank)) if opset < 13 else {axis}
    for block in layout:
        if normalized & set(block.axes):
            state.sets.freeze(block.ids, f"{state.where(node)} normalizes over the channels")
    unary(state, node)


def channel_params(state: AnalysisState, node: gs.Node, params: Sequence[int]) -> None:
    """BatchNormalization / InstanceNormalization: per-channel parameters on axis 1."""
    layout = state.layout(node.inputs[0])
    block = block_on(layout, 1)
    if block is not None and len(block.axes) > 1:
        state.sets.freeze(block.ids, f"{state.where(node)}: channel axis is split across axes")
    elif block is not None:
        for index in params:
            if optional_input(node, index) is not None:
                state.records.slices.append(AxisSlice(node, index, (0,), block.ids, Role.PARAM))
    if any(o.outputs for o in node.outputs[1:]):
        state.freeze(layout, f"{state.where(node)}: training statistics outputs are read")
    state.set_layout(node.outputs[0], layout)


def layer_norm(state: AnalysisState, node: gs.Node) -> None:
    """LayerNormalization over axes ``[axis, rank)``: gamma and beta are sliced
    with the channels. Removing channels changes the statistics (lossy, like
    any pruning of a normalized hidden dimension)."""
    out_shape = state.shape(node.inputs[0])
    if out_shape is None:
        state.freeze_inputs(node, f"{state.where(node)}: input shape unknown")
        return
    layout = state.layout(node.inputs[0])
    for index in (1, 2):
        if optional_input(node, index) is None:
            continue
        shape = state.shape(node.inputs[index])
        offset = len(out_shape) - len(shape)
        for block in layout:
            _cover(state, node, index, node.inputs[index], shape, offset, (), block)
    state.set_layout(node.outputs[0], layout)


def spatial(state: AnalysisState, node: gs.Node) -> None:
    """Pools and other ops acting on spatial axes only: channels (axis 1) pass."""
    layout = state.layout(node.inputs[0])
    passing = []
    for block in layout:
        if block.axes == (1,):
            passing.append(block)
        else:
            state.sets.freeze(block.ids, f"{state.where(node)} mixes the axes channels are on")
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        state.freeze(layout, f"{state.where(node)}: pooling indices are read")
    state.set_layout(node.outputs[0], passing)


def pad(state: AnalysisState, node: gs.Node) -> None:
    """Pad: channels pass when their axes are not padded."""
    layout = state.layout(node.inputs[0])
    rank = state.rank(node.inputs[0])
    pads_t = optional_input(node, 1)
    pads = state.const(pads_t) if pads_t is not None else np.asarray(attr(node, "pads", []))
    axes_t = optional_input(node, 3)
    if pads is None or rank is None or (axes_t is not None and state.const(axes_t) is None):
        state.freeze(layout, f"{state.where(node)}: pads are not constant")
        return
    pads = np.asarray(pads, dtype=np.int64).reshape(-1)
    axes = (
        [int(a) % rank for a in np.asarray(state.const(axes_t)).reshape(-1)]
        if axes_t is not None
        else list(range(rank))
    )
    padded = {a for k, a in enumerate(axes) if pads[k] != 0 or pads[k + len(axes)] != 0}
    for block in layout:
        if padded & set(block.axes):
            state.sets.freeze(block.ids, f"{state.where(node)} pads the channel axis")
    state.set_layout(node.outputs[0], layout)


def resize(state: AnalysisState, node: gs.Node) -> None:
    """Resize/Upsample: the channel axis must keep scale 1; a constant ``sizes``
    entry for it is rewritten to the kept channel count."""
    layout = state.layout(node.inputs[0])
    if not layout:
        return
    scales_index = 1 if node.op == "Upsample" or len(node.inputs) == 2 else 2
    scales_t, sizes_t = optional_input(node, scales_index), optional_input(node, 3)
    scales = state.const(scales_t) if scales_t is not None else None
    sizes = state.const(sizes_t) if sizes_t is not None else None
    for block in layout:
        problem = None
        for k, a in enumerate(block.axes):
            if scales is not None and scales.size and float(np.asarray(scales).reshape(-1)[a]) != 1.0:
                problem = "scales the channel axis"
            elif sizes_t is not None and sizes is None:
                problem = "takes output sizes computed at run time"
            elif sizes is not None and sizes.size:
                state.records.shape_entries.append(ShapeEntry(node, 3, a, block.ids, k))
            elif scales_t is not None and scales is None:
                problem = "takes scales computed at run time"
        if problem:
            state.sets.freeze(block.ids, f"{state.where(node)} {problem}")
    state.set_layout(node.outputs[0], layout)
