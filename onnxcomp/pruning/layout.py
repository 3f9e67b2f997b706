"""Where channels sit inside a tensor, and how layout-only ops move them.

A tensor's *layout* is a tuple of :class:`Block` s. A block covers one or more
axes of the tensor and holds, for every position along those axes, the channel
id found there (:data:`~onnxcomp.pruning.channels.FIXED` where there is none).
The usual case is one block on the channel axis of a feature map. Multi-axis
blocks appear when a reshape splits channels, e.g. a fused QKV projection of
360 features reshaped to ``[3, heads=8, head_dim=15]``: the block then covers
those three axes with a ``(3, 8, 15)`` id array, so later ops can slice the
QKV axis and contract the head dimension while the ids stay attached.

Axes not covered by any block carry no channel: batch, spatial, sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .channels import FIXED, ChannelSets


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """Channel ids on ``axes`` (sorted) of a tensor; ``ids.shape`` = the tensor's dims there."""

    axes: tuple[int, ...]
    ids: np.ndarray

    def __post_init__(self) -> None:
        if len(self.axes) != self.ids.ndim:
            raise ValueError("block axes and id array rank differ")
        if list(self.axes) != sorted(self.axes):
            raise ValueError("block axes must be sorted")

    def along(self, axis: int) -> int:
        """Index of tensor ``axis`` within the block's id array."""
        return self.axes.index(axis)

    def live_ids(self) -> np.ndarray:
        flat = self.ids.reshape(-1)
        return flat[flat != FIXED]

    def moved(self, axis_map: dict[int, int]) -> Block:
        """The block with tensor axes renamed by ``axis_map`` (id array permuted to stay sorted)."""
        new_axes = [axis_map[a] for a in self.axes]
        order = np.argsort(new_axes)
        return Block(tuple(int(new_axes[i]) for i in order), np.transpose(self.ids, order))


Layout = tuple[Block, ...]
EMPTY: Layout = ()


def block_on(layout: Layout, axis: int) -> Block | None:
    for block in layout:
        if axis in block.axes:
            return block
    return None


def all_ids(layout: Layout) -> np.ndarray:
    if not layout:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([b.live_ids() for b in layout])


def single_axis_ids(layout: Layout, axis: int) -> np.ndarray | None | str:
    """The 1-D ids on ``axis``: None when untagged, a reason string when the
    axis is part of a multi-axis block."""
    block = block_on(layout, axis)
    if block is None:
        return None
    if len(block.axes) != 1:
        return "channels on this axis are split across several axes"
    return block.ids


def transpose(layout: Layout, perm: Sequence[int]) -> Layout:
    """Layout after ``Transpose(perm)``: output axis ``i`` is input axis ``perm[i]``."""
    axis_map = {int(src): i for i, src in enumerate(perm)}
    return tuple(b.moved(axis_map) for b in layout)


def shift(layout: Layout, offset: int) -> Layout:
    """Axes renumbered by ``offset`` (right-aligned broadcasting to a higher rank)."""
    if offset == 0:
        return layout
    return tuple(Block(tuple(a + offset for a in b.axes), b.ids) for b in layout)


def expand_to(block: Block, axes: Sequence[int], dims: Sequence[int]) -> np.ndarray:
    """``block``'s ids broadcast over ``axes`` (a sorted superset of its axes),
    where ``dims[i]`` is the size along ``axes[i]``."""
    shape = [dims[i] if a in block.axes else 1 for i, a in enumerate(axes)]
    return np.broadcast_to(block.ids.reshape(shape), tuple(dims))


def compress(axes: Sequence[int], ids: np.ndarray) -> Block | None:
    """The smallest block equal to ``ids`` on ``axes``: axes along which no id
    varies are dropped. None when nothing but FIXED positions remain."""
    keep = []
    for k in range(ids.ndim):
        first = np.take(ids, [0], axis=k)
        if ids.shape[k] > 1 and not np.array_equal(np.broadcast_to(first, ids.shape), ids):
            keep.append(k)
    index = tuple(slice(None) if k in keep else 0 for k in range(ids.ndim))
    reduced = ids[index]
    if not keep:
        if np.all(reduced == FIXED):
            return None
        return Block((), np.asarray(reduced).reshape(()))
    if np.all(reduced == FIXED):
        return None
    return Block(tuple(int(axes[k]) for k in keep), np.ascontiguousarray(reduced))


def reshape_groups(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into runs of input and output axes with equal products.

    A row-major reshape maps each run of input axes onto the paired run of
    output axes independently. Runs are formed on the axes larger than 1; a
    size-1 axis joins the run of the next larger axis (or the last run).
    Returns None when the element counts differ.
    """
    if int(np.prod(in_shape, dtype=np.int64)) != int(np.prod(out_shape, dtype=np.int64)):
        return None
    a = [k for k, d in enumerate(in_shape) if int(d) != 1]
    b = [k for k, d in enumerate(out_shape) if int(d) != 1]
    runs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a):
        gi, pi = [a[i]], int(in_shape[a[i]])
        gj, pj = [b[j]], int(out_shape[b[j]])
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(a[i])
                pi *= int(in_shape[a[i]])
                i += 1
            else:
                gj.append(b[j])
                pj *= int(out_shape[b[j]])
                j += 1
        runs.append((gi, gj))
    if not runs:
        return [(list(range(len(in_shape))), list(range(len(out_shape))))]
    return [
        (_with_unit_axes(runs, 0, len(in_shape), r), _with_unit_axes(runs, 1, len(out_shape), r))
        for r in range(len(runs))
    ]


def _with_unit_axes(runs, side: int, rank: int, r: int) -> list[int]:
    """Axes of run ``r`` on one side, plus the size-1 axes that precede them
    (and, for the last run, the trailing ones)."""
    low = runs[r - 1][side][-1] + 1 if r > 0 else 0
    high = runs[r][side][-1] + 1 if r < len(runs) - 1 else rank
    return list(range(low, high))


def reshape(
    layout: Layout,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    sets: ChannelSets,
    where: str,
) -> Layout:
    """Layout after a row-major reshape from ``in_shape`` to ``out_shape``.

    Each block is carried through the runs of axes it touches: its ids are
    broadcast over the run's untagged axes, reshaped like the data, and
    compressed to the output axes along which they vary. A flatten of
    ``[N, C, H, W]`` into ``[N, C*H*W]`` thus yields ``C*H*W`` features, each
    holding its channel's id; a split of 384 features into ``[12, 32]`` yields a
    two-axis block. Two blocks meeting in one run cannot be represented and are
    frozen.
    """
    if not layout:
        return EMPTY
    groups = reshape_groups(in_shape, out_shape)
    if groups is None:
        for block in layout:
            sets.freeze(block.ids, f"{where}: element counts of the reshape do not match")
        return EMPTY
    group_of_axis = {a: g for g, (gi, _) in enumerate(groups) for a in gi}
    owners: dict[int, Block] = {}
    clash: set[int] = set()
    for block in layout:
        for g in {group_of_axis[a] for a in block.axes}:
            if g in owners and owners[g] is not block:
                clash.add(id(block))
                clash.add(id(owners[g]))
            owners[g] = block
    out: list[Block] = []
    for block in layout:
        if id(block) in clash:
            sets.freeze(block.ids, f"{where}: reshape mixes channels of two different layouts")
            continue
        touched = sorted({group_of_axis[a] for a in block.axes})
        in_axes = [a for g in touched for a in groups[g][0]]
        out_axes = [a for g in touched for a in groups[g][1]]
        full = expand_to(block, in_axes, [int(in_shape[a]) for a in in_axes])
        moved = full.reshape([int(out_shape[a]) for a in out_axes])
        result = compress(out_axes, moved)
        if result is not None and result.axes:
            out.append(result)
        elif result is not None:
            sets.freeze(block.ids, f"{where}: a single channel fills the whole tensor")
    return tuple(out)


def unite_blocks(blocks: Sequence[tuple[Block, Sequence[int]]], sets: ChannelSets, reason: str) -> Layout:
    """Merge blocks that share axes (after broadcasting) by uniting their ids.

    ``blocks`` pairs each block with the full output dims, so a block covering
    fewer axes than its partner is broadcast over the partner's extra axes.
    Returns the merged, non-overlapping blocks.
    """
    merged: list[tuple[set[int], list[Block]]] = []
    for block, _ in blocks:
        axes = set(block.axes)
        hit = [m for m in merged if m[0] & axes]
        for m in hit:
            merged.remove(m)
            axes |= m[0]
        members = [b for m in hit for b in m[1]] + [block]
        merged.append((axes, members))
    dims = blocks[0][1] if blocks else ()
    out = []
    for axes, members in merged:
        ordered = sorted(axes)
        sizes = [int(dims[a]) for a in ordered]
        expanded = [expand_to(b, ordered, sizes) for b in members]
        for other in expanded[1:]:
            sets.unite(expanded[0], other, reason)
        out.append(Block(tuple(ordered), np.ascontiguousarray(expanded[0])))
    return tuple(out)
