"""Rules for ops that move channels between axes or positions: Transpose,
Reshape/Flatten/Squeeze/Unsqueeze, Concat, Split, Slice, Gather, and the small
integer sub-graphs (``Shape`` -> ``Gather`` -> ``Concat``) that compute reshape
targets at run time.

Shape vectors are tracked entry by entry: a constant (remembering which
constant holds it, so a rewrite can change it), a dim of some tensor, or
unknown. A reshape whose target size for a channel axis is a constant gets that
constant rewritten; one that copies the dim of a tensor with the same channels
follows automatically; anything else freezes the channels. A channel count
read by any other op (arithmetic on shapes) freezes them too.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import attr
from .channels import FIXED
from .layout import EMPTY, Block, Layout, block_on, reshape, transpose
from .members import ShapeEntry, SliceBounds, SplitSizes
from .rules_elementwise import combine_operands
from .state import AnalysisState, ConstEntry, DimEntry, ShapeEntryValue, optional_input

SHAPE_VALUE_LIMIT = 16
"""Integer vectors up to this length are tracked as shape values."""


def transpose_rule(state: AnalysisState, node: gs.Node) -> None:
    rank = state.input_rank(node)
    if rank is None:
        return
    perm = attr(node, "perm", None) or list(reversed(range(rank)))
    state.set_layout(node.outputs[0], transpose(state.layout(node.inputs[0]), perm))


def reshape_rule(state: AnalysisState, node: gs.Node) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: carried by the concrete in/out shapes."""
    x, out = node.inputs[0], node.outputs[0]
    layout = state.layout(x)
    if not layout:
        if node.op == "Reshape":
            _untagged_target(state, node, EMPTY)
        return
    in_shape, out_shape = state.shape(x), state.shape(out)
    if in_shape is None or out_shape is None:
        state.freeze(layout, f"{state.where(node)}: shapes unknown")
        return
    moved = reshape(layout, in_shape, out_shape, state.sets, state.where(node))
    if node.op == "Reshape":
        moved = _reshape_target(state, node, layout, moved)
    state.set_layout(out, moved)


def _reshape_target(state: AnalysisState, node: gs.Node, in_layout: Layout, out_layout: Layout) -> Layout:
    """Check (and record rewrites of) the reshape's target entries for channel axes."""
    entries = shape_entries(state, node, 1)
    where = state.where(node)
    if entries is None:
        state.freeze(out_layout, f"{where}: target shape is computed in a way the analysis does not follow")
        return EMPTY
    kept = []
    for block in out_layout:
        problem = None
        for k, axis in enumerate(block.axes):
            entry = entries[axis] if axis < len(entries) else None
            problem = _channel_entry(state, node, in_layout, block, k, axis, entry)
            if problem:
                break
        if problem:
            state.sets.freeze(block.ids, f"{where}: {problem}")
        else:
            kept.append(block)
    _untagged_target(state, node, out_layout, entries)
    return tuple(kept)


def _channel_entry(state, node, in_layout, block: Block, k: int, axis: int, entry: ShapeEntryValue) -> str | None:
    """Why target entry ``axis`` (a channel axis) cannot follow pruning, or None."""
    if isinstance(entry, ConstEntry):
        if entry.value == -1:
            return None
        if entry.value == 0 and not attr(node, "allowzero", 0):
            source = block_on(in_layout, axis)
            return None if source is not None and _same_axis(state, source, axis, block, k) else (
                "copies a dim (0) that does not carry the same channels"
            )
        if entry.holder is None:
            return "the channel count is a constant the analysis cannot rewrite"
        holder_node, index, offset = entry.holder
        state.records.shape_entries.append(ShapeEntry(holder_node, index, offset, block.ids, k))
        return None
    if isinstance(entry, DimEntry):
        source = state.dim_block(entry)
        if source is None:
            return f"takes the channel count from '{entry.tensor}', whose channels are not pruned"
        return None if _same_axis(state, source, entry.axis, block, k) else "takes the channel count from a differently split tensor"
    return "target size of the channel axis is computed at run time"


def _same_axis(state: AnalysisState, source: Block, source_axis: int, block: Block, k: int) -> bool:
    """Unite the channels along ``source_axis`` of ``source`` with those along
    axis ``k`` of ``block`` so both keep the same count; False if impossible."""
    a = np.moveaxis(source.ids, source.along(source_axis), 0)
    b = np.moveaxis(block.ids, k, 0)
    if a.shape[0] != b.shape[0]:
        return False
    state.sets.unite(a.reshape(a.shape[0], -1)[:, :1], b.reshape(b.shape[0], -1)[:, :1], "reshape target follows it")
    return True


def _untagged_target(state: AnalysisState, node: gs.Node, out_layout: Layout, entries=None) -> None:
    """An untagged output axis sized by a channel count would change size: freeze that channel axis."""
    entries = entries if entries is not None else shape_entries(state, node, 1)
    for axis, entry in enumerate(entries or ()):
        if isinstance(entry, DimEntry) and block_on(out_layout, axis) is None:
            source = state.dim_block(entry)
            if source is not None:
                state.sets.freeze(source.ids, f"{state.where(node)} sizes a non-channel axis by a channel count")


def concat(state: AnalysisState, node: gs.Node) -> None:
    out_shape = state.shape(node.outputs[0])
    if out_shape is None:
        state.freeze_inputs(node, f"{state.where(node)}: output shape unknown")
        return
    axis = int(attr(node, "axis", 0)) % len(out_shape)
    pieces, along = [], []
    for tensor in node.inputs:
        shape = state.shape(tensor)
        layout = state.layout(tensor)
        block = block_on(layout, axis)
        if block is not None and len(block.axes) > 1:
            state.freeze(layout, f"{state.where(node)}: concatenates a split channel axis")
            block = None
        pieces.append(block.ids if block is not None else np.full(shape[axis], FIXED, dtype=np.int64))
        along.append(block is not None)
    others = _concat_others(state, node, axis, out_shape)
    if any(along):
        others = (*others, Block((axis,), np.concatenate(pieces)))
    state.set_layout(node.outputs[0], tuple(sorted(others, key=lambda b: b.axes)))


def _concat_others(state: AnalysisState, node: gs.Node, axis: int, out_shape) -> Layout:
    """Channels on axes other than the concatenation axis are shared by all inputs."""
    operands = [
        (i, tuple(b for b in state.layout(t) if axis not in b.axes)) for i, t in enumerate(node.inputs)
    ]
    return combine_operands(state, node, operands, out_shape)


def split(state: AnalysisState, node: gs.Node) -> None:
    x = node.inputs[0]
    shape, layout = state.shape(x), state.layout(x)
    if shape is None:
        state.freeze(layout, f"{state.where(node)}: input shape unknown")
        return
    axis = int(attr(node, "axis", 0)) % len(shape)
    sizes = _split_sizes(state, node, shape[axis])
    block = block_on(layout, axis)
    if block is not None and sizes is None:
        state.sets.freeze(block.ids, f"{state.where(node)}: split sizes are not constant")
        block = None
    if block is not None:
        k = block.along(axis)
        state.records.split_sizes.append(SplitSizes(node, tuple(sizes), block.ids, k))
    start = 0
    for out, size in zip(node.outputs, sizes or [0] * len(node.outputs)):
        out_layout = [b for b in layout if b is not block]
        if block is not None:
            part = np.take(block.ids, range(start, start + size), axis=k)
            state.records.protected.append(part)
            out_layout.append(Block(block.axes, part))
        start += size
        state.set_layout(out, sorted(out_layout, key=lambda b: b.axes))


def _split_sizes(state: AnalysisState, node: gs.Node, dim: int) -> list[int] | None:
    split_t = optional_input(node, 1)
    if split_t is not None:
        value = state.const(split_t)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    if "split" in node.attrs:
        return [int(v) for v in node.attrs["split"]]
    parts = int(attr(node, "num_outputs", len(node.outputs)))
    chunk = -(-dim // parts)
    return [min(chunk, dim - i * chunk) for i in range(parts)]


def slice_rule(state: AnalysisState, node: gs.Node) -> None:
    x = node.inputs[0]
    shape, layout = state.shape(x), state.layout(x)
    if not layout:
        return
    params = _slice_params(state, node, shape)
    if params is None:
        state.freeze(layout, f"{state.where(node)}: slice parameters are not constant")
        return
    blocks = {id(b): b for b in layout}
    current = {id(b): b.ids for b in layout}
    for entry, (start, end, axis, step) in enumerate(params):
        block = block_on(layout, axis)
        if block is None:
            continue
        k = block.along(axis)
        if step != 1:
            state.sets.freeze(block.ids, f"{state.where(node)} slices the channel axis with a step")
            blocks.pop(id(block), None)
            continue
        start, end = _clamp(start, end, shape[axis])
        state.records.slice_bounds.append(SliceBounds(node, entry, start, end, current[id(block)], k))
        current[id(block)] = np.take(current[id(block)], range(start, end), axis=k)
        state.records.protected.append(current[id(block)])
    state.set_layout(node.outputs[0], [Block(b.axes, current[key]) for key, b in blocks.items()])


def _clamp(start: int, end: int, dim: int) -> tuple[int, int]:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    return start, max(start, end)


def _slice_params(state: AnalysisState, node: gs.Node, shape) -> list[tuple[int, int, int, int]] | None:
    if shape is None:
        return None
    rank = len(shape)
    if len(node.inputs) > 1:
        values = []
        for index in (1, 2, 3, 4):
            tensor = optional_input(node, index)
            value = None if tensor is None else state.const(tensor)
            if tensor is not None and value is None:
                return None
            values.append(None if value is None else [int(v) for v in np.asarray(value).reshape(-1)])
        starts, ends, axes, steps = values
    else:
        starts, ends = list(attr(node, "starts", [])), list(attr(node, "ends", []))
        axes, steps = attr(node, "axes", None), None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    return [(s, e, a % rank, st) for s, e, a, st in zip(starts, ends, axes, steps)]


def gather(state: AnalysisState, node: gs.Node) -> None:
    data, indices = node.inputs[0], node.inputs[1]
    rank, q = state.rank(data), state.rank(indices)
    layout = state.layout(data)
    state.freeze(state.layout(indices), f"{state.where(node)} uses channels as indices")
    if not layout:
        return
    if rank is None or q is None:
        state.freeze(layout, f"{state.where(node)}: shapes unknown")
        return
    axis = int(attr(node, "axis", 0)) % rank
    out = []
    for block in layout:
        if axis in block.axes:
            state.sets.freeze(block.ids, f"{state.where(node)} gathers along the channel axis")
            continue
        out.append(block.moved({a: a if a < axis else a + q - 1 for a in block.axes}))
    state.set_layout(node.outputs[0], out)


# ----------------------------------------------------------------------------- shape values

SHAPE_VALUE_OPS = frozenset({"Shape", "Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze", "Identity"})


def track_shape_values(state: AnalysisState, node: gs.Node) -> bool:
    """Compute the shape-vector entries of ``node``'s output if it is a shape
    computation; returns whether it was one."""
    out = node.outputs[0] if node.outputs else None
    if out is None or node.op not in SHAPE_VALUE_OPS:
        return False
    if node.op == "Shape":
        rank = state.rank(node.inputs[0])
        if rank is None:
            return False
        start = int(attr(node, "start", 0))
        end = int(attr(node, "end", rank))
        start, end = _clamp(start, end, rank)
        state.shape_values[out.name] = [DimEntry(node.inputs[0].name, a) for a in range(start, end)]
        return True
    if not any(t.name in state.shape_values for t in node.inputs):
        return False
    entries = _shape_op(state, node)
    if entries is None:
        return False
    state.shape_values[out.name] = entries
    return True


def _shape_op(state: AnalysisState, node: gs.Node) -> list[ShapeEntryValue] | None:
    if node.op == "Concat":
        entries: list[ShapeEntryValue] = []
        for index in range(len(node.inputs)):
            part = shape_entries(state, node, index)
            if part is None:
                return None
            entries.extend(part)
        return entries
    base = shape_entries(state, node, 0)
    if base is None:
        return None
    if node.op == "Gather":
        indices = state.const(node.inputs[1])
        if indices is None:
            return None
        return [base[int(i) % len(base)] for i in np.asarray(indices).reshape(-1)]
    if node.op == "Slice":
        params = _slice_params(state, node, (len(base),))
        if params is None or len(params) != 1 or params[0][3] != 1:
            return None
        start, end = _clamp(params[0][0], params[0][1], len(base))
        return base[start:end]
    return base  # Cast, Unsqueeze, Squeeze, Identity keep the entries


def shape_entries(state: AnalysisState, node: gs.Node, index: int) -> list[ShapeEntryValue] | None:
    """Entries of the 1-D integer input ``node.inputs[index]``, or None if unknown."""
    tensor = node.inputs[index]
    if tensor.name in state.shape_values:
        return state.shape_values[tensor.name]
    value = state.const(tensor)
    if value is not None and value.dtype.kind in "iu" and value.size <= SHAPE_VALUE_LIMIT:
        flat = np.asarray(value).reshape(-1)
        return [ConstEntry(int(v), (node, index, k)) for k, v in enumerate(flat)]
    shape = state.shape(tensor)
    if shape is not None and len(shape) <= 1:
        return [None] * (int(shape[0]) if shape else 1)
    return None
