"""What the dependency analysis records for the rewrite.

Each record names a node and the channel ids along some axis of one of its
inputs or attributes. Once the pruner has decided which channel components go,
:mod:`onnxcomp.pruning.rewrite` turns every record into an edit: a constant
sliced, a ``group`` attribute or a shape constant updated, slice bounds moved.

Positions along an axis are *kept* when any channel in their slab survives
(FIXED positions always survive). The analysis makes every multi-axis block
rectangular (a slab is removed whole or kept whole), so this is exact.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import onnx_graphsurgeon as gs

from .channels import FIXED


class Role(enum.Enum):
    """Why a constant is sliced (the criteria weigh sources, sinks and depthwise filters)."""

    SOURCE = "source"  # output channels of a layer's weight (Conv filters, Gemm rows)
    SINK = "sink"  # input channels of a layer's weight (Conv/Gemm/MatMul columns)
    DEPTHWISE = "depthwise"  # a depthwise conv filter: input and output channel at once
    BIAS = "bias"
    PARAM = "param"  # per-channel constants: BN/LN parameters, PRelu slopes, elementwise operands


@dataclasses.dataclass(eq=False)
class Removal:
    """Which channel ids are removed (a boolean per id; FIXED ids never are)."""

    removed: np.ndarray

    def of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(ids.shape, dtype=bool)
        live = ids != FIXED
        out[live] = self.removed[ids[live]]
        return out

    def kept_along(self, ids: np.ndarray, axis: int) -> np.ndarray:
        """Positions along ``axis`` of ``ids`` that keep at least one channel."""
        gone = self.of(ids)
        others = tuple(k for k in range(ids.ndim) if k != axis)
        return ~np.all(gone, axis=others) if others else ~gone

    @property
    def any(self) -> bool:
        return bool(self.removed.any())


@dataclasses.dataclass(eq=False)
class AxisSlice:
    """Constant input ``node.inputs[index]`` loses the positions of removed
    channels along ``axes`` (``ids.shape`` = the constant's dims there)."""

    node: gs.Node
    index: int
    axes: tuple[int, ...]
    ids: np.ndarray
    role: Role

    @property
    def tensor(self) -> gs.Tensor:
        return self.node.inputs[self.index]


@dataclasses.dataclass(eq=False)
class GroupCount:
    """A depthwise conv whose ``group`` becomes the number of kept channels."""

    node: gs.Node
    ids: np.ndarray


@dataclasses.dataclass(eq=False)
class GroupedConv:
    """A grouped conv (1 < group < channels): its weight is cut group by group.

    The analysis requires the same number of removed channels in every group,
    so each group keeps ``C_in'/group`` inputs and ``C_out'/group`` outputs.
    """

    node: gs.Node
    in_ids: np.ndarray | None
    out_ids: np.ndarray
    group: int


@dataclasses.dataclass(eq=False)
class ShapeEntry:
    """Entry ``offset`` of the 1-D int constant ``node.inputs[index]`` is the
    size of a channel axis: it becomes the number of kept positions along axis
    ``axis`` of the id array ``ids``."""

    node: gs.Node
    index: int
    offset: int
    ids: np.ndarray
    axis: int


@dataclasses.dataclass(eq=False)
class SliceBounds:
    """A ``Slice`` on a channel axis: ``start``/``end`` (normalized, step 1)
    become the counts of kept input positions before them.

    ``ids``/``axis`` locate the input positions along the sliced data axis;
    ``entry`` is the index of that axis in the node's starts/ends lists.
    """

    node: gs.Node
    entry: int
    start: int
    end: int
    ids: np.ndarray
    axis: int


@dataclasses.dataclass(eq=False)
class SplitSizes:
    """A ``Split`` on a channel axis: each part's size becomes its kept count."""

    node: gs.Node
    sizes: tuple[int, ...]
    ids: np.ndarray
    axis: int


@dataclasses.dataclass(eq=False)
class Observation:
    """Tensor ``name``, read by layer ``node``, carries channel ``ids[i]`` at
    position ``i`` of ``axis`` (where activation statistics are measured)."""

    name: str
    axis: int
    ids: np.ndarray
    node: gs.Node


@dataclasses.dataclass(eq=False)
class MacLayer:
    """A compute layer whose MACs scale with the kept fraction along each factor."""

    node: gs.Node
    factors: list[tuple[np.ndarray, int]]


@dataclasses.dataclass
class Records:
    """Everything the analysis found, for grouping, criteria and the rewrite."""

    slices: list[AxisSlice] = dataclasses.field(default_factory=list)
    group_counts: list[GroupCount] = dataclasses.field(default_factory=list)
    grouped_convs: list[GroupedConv] = dataclasses.field(default_factory=list)
    shape_entries: list[ShapeEntry] = dataclasses.field(default_factory=list)
    slice_bounds: list[SliceBounds] = dataclasses.field(default_factory=list)
    split_sizes: list[SplitSizes] = dataclasses.field(default_factory=list)
    partitions: list[np.ndarray] = dataclasses.field(default_factory=list)
    protected: list[np.ndarray] = dataclasses.field(default_factory=list)
    observations: list[Observation] = dataclasses.field(default_factory=list)
    mac_layers: list[MacLayer] = dataclasses.field(default_factory=list)
